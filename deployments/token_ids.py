"""Checks on token-id inputs (completions prompts, embeddings inputs given as token arrays)."""

from __future__ import annotations

from collections.abc import Sequence

from contract.errors import InvalidRequestError


def check_in_vocabulary(ids: Sequence[int], vocab_size: int, *, where: str, param: str) -> None:
    """A 400 naming the first id past the tokenizer's vocabulary: an engine would index past its
    embedding table (a crash or garbage), so such input never reaches one."""
    for token in ids:
        if token >= vocab_size:
            raise InvalidRequestError(
                f"{where} has token id {token}, outside the vocabulary (size {vocab_size})", param=param
            )
