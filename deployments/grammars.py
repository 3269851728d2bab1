"""Constraints compiled by xgrammar: checked once per distinct constraint (a bad schema, regex or
grammar is a 400 naming its field, before any engine sees it), and the transformers engine's
per-sequence matchers, which mask the logits of every token the constraint forbids."""

from __future__ import annotations

import functools

from contract.errors import InvalidRequestError
from contract.structured_outputs import Constraint

MAX_CHECKED = 256  # distinct constraints whose check is remembered


def check(constraint: Constraint, param: str) -> None:
    """A 400 naming `param` when the constraint does not compile."""
    problem = _problem(constraint)
    if problem:
        raise InvalidRequestError(f"The {_NAMES[constraint.kind]} does not compile: {problem}", param=param,
                                  code="invalid_structured_output")


_NAMES = {"json_schema": "JSON schema", "regex": "regex", "grammar": "grammar"}


@functools.lru_cache(maxsize=MAX_CHECKED)
def _problem(constraint: Constraint) -> str:
    import xgrammar as xgr

    try:
        if constraint.kind == "json_schema":
            xgr.Grammar.from_json_schema(constraint.spec)
        elif constraint.kind == "regex":
            xgr.Grammar.from_regex(constraint.spec)
        else:
            xgr.Grammar.from_ebnf(constraint.spec)
    except (RuntimeError, ValueError, TypeError) as exc:
        # xgrammar's messages start with a C++ source location: keep what follows it.
        return str(exc).strip().split(": ", 1)[-1][:500]
    return ""


class GrammarCompiler:
    """A model's compiled constraints (xgrammar caches each compiled grammar, so a repeated one
    costs nothing) and a matcher per sequence."""

    def __init__(self, tokenizer, vocab_size: int, stop_token_ids: list[int]):
        import xgrammar as xgr

        self._xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=stop_token_ids)
        self._compiler = xgr.GrammarCompiler(info, max_threads=1)
        self.vocab_size = vocab_size

    def matcher(self, constraint: Constraint) -> TokenMask:
        if constraint.kind == "json_schema":
            compiled = self._compiler.compile_json_schema(constraint.spec)
        elif constraint.kind == "regex":
            compiled = self._compiler.compile_regex(constraint.spec)
        else:
            compiled = self._compiler.compile_grammar(constraint.spec)
        return TokenMask(self._xgr, self._xgr.GrammarMatcher(compiled), self.vocab_size)


class TokenMask:
    """One sequence's progress through its constraint."""

    def __init__(self, xgr, matcher, vocab_size: int):
        self._xgr, self._matcher = xgr, matcher
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)

    def apply(self, logits) -> None:
        """Set the logits (one row, float32) of the tokens the constraint forbids next to -inf."""
        self._matcher.fill_next_token_bitmask(self._bitmask)
        self._xgr.apply_token_bitmask_inplace(logits[None], self._bitmask.to(logits.device))

    def accept(self, token: int) -> None:
        if not self._matcher.is_terminated():
            self._matcher.accept_token(token)

    @property
    def finished(self) -> bool:
        return self._matcher.is_terminated()
