"""Reasoning parsers (vLLM's `--reasoning-parser`): a model's `<think>...</think>` text moves
to `reasoning_content`, the rest stays `content`, whole or streamed. The rendered prompt says
where the output starts: a prompt ending in an open `<think>` starts it in reasoning, one ending
in a closed (empty) think block starts it in content; a `<think>` opening the output itself is
dropped. Streaming holds back text that may still become a tag ("</th" + "ink>"), so the
streamed pieces always add up to what `parse` returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

START, END = "<think>", "</think>"


@dataclass(frozen=True)
class ReasoningStep:
    reasoning: str = ""
    content: str = ""


class ReasoningParser:
    """One per generated sequence; `feed` pieces then `finish`, or `parse` the whole output."""

    name: ClassVar[str]
    # Where an output that opens no <think> starts when the prompt opened none either: in
    # reasoning (DeepSeek-R1: older templates leave <think> out) or in content (Qwen3:
    # non-thinking models and templates never open one).
    reasoning_by_default: ClassVar[bool]

    def __init__(self, prompt_text: str = ""):
        self._prompt_text = prompt_text
        tail = prompt_text.rstrip()
        # Output opening with <think> (after whitespace) starts reasoning; otherwise it starts
        # in `_fallback`: reasoning when the prompt opened <think> or the model defaults to it.
        self._mode = "content" if tail.endswith(END) else "undecided"  # END: thinking switched off
        self._fallback = "reasoning" if tail.endswith(START) or self.reasoning_by_default else "content"
        self._held = ""

    def parse(self, text: str) -> tuple[str | None, str | None]:
        """(reasoning_content, content) of a whole output, each None when empty."""
        fresh = type(self)(self._prompt_text)
        steps = (fresh.feed(text), fresh.finish())
        reasoning = "".join(step.reasoning for step in steps)
        content = "".join(step.content for step in steps)
        return reasoning or None, content or None

    def feed(self, delta: str) -> ReasoningStep:
        self._held += delta
        return self._drain(final=False)

    def finish(self) -> ReasoningStep:
        """Releases what was held back as the text it was part of."""
        return self._drain(final=True)

    def _drain(self, *, final: bool) -> ReasoningStep:
        reasoning: list[str] = []
        content: list[str] = []
        while self._held:
            if self._mode == "content":
                content.append(self._held)
                self._held = ""
            elif self._mode == "undecided":
                if not self._decide(final):
                    break
            elif not self._reason(reasoning, final):
                break
        return ReasoningStep("".join(reasoning), "".join(content))

    def _decide(self, final: bool) -> bool:
        """Undecided: an output opening with <think> (after whitespace) starts in reasoning
        without it, any other output in the fallback mode. False while the held text could
        still become that <think>."""
        stripped = self._held.lstrip()
        if stripped.startswith(START):
            self._mode, self._held = "reasoning", stripped[len(START):]
            return True
        if START.startswith(stripped) and not final:
            return False
        self._mode = self._fallback
        return True

    def _reason(self, reasoning: list[str], final: bool) -> bool:
        """Reasoning: up to </think> is reasoning, after it content. False while only a
        possible part of the tag is held."""
        held = self._held
        end = held.find(END)
        if end != -1:
            reasoning.append(held[:end])
            self._held, self._mode = held[end + len(END):], "content"
            return True
        keep = 0 if final else _partial_tag(held, END)
        reasoning.append(held[:len(held) - keep])
        self._held = held[len(held) - keep:]
        return False


def _partial_tag(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


class DeepSeekR1ReasoningParser(ReasoningParser):
    """DeepSeek-R1: output is reasoning until </think> (its template opens <think> in the
    prompt, older ones let the model write it); without </think> it is all reasoning."""

    name = "deepseek_r1"
    reasoning_by_default = True


class Qwen3ReasoningParser(ReasoningParser):
    """Qwen3: the model opens <think> itself (Qwen3), or the template opens it in the prompt
    (Qwen3-Thinking-2507, Qwen3.5), or closes an empty one (enable_thinking=False); an output
    that opens none is all content. An unclosed think block is all reasoning (truncated)."""

    name = "qwen3"
    reasoning_by_default = False


REASONING_PARSERS: dict[str, type[ReasoningParser]] = {
    parser.name: parser for parser in (DeepSeekR1ReasoningParser, Qwen3ReasoningParser)
}


def make_reasoning_parser(name: str, prompt_text: str = "") -> ReasoningParser:
    try:
        return REASONING_PARSERS[name](prompt_text)
    except KeyError:
        raise ValueError(f"Unknown reasoning parser '{name}'; known: {sorted(REASONING_PARSERS)}") from None
