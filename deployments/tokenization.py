"""/tokenize and /detokenize on a task's own tokenizer, for every task that has one: the ids its
model reads for a prompt (or, where the task renders chat, for messages), and ids back to text."""

from __future__ import annotations

from collections.abc import Callable

from contract.errors import InvalidRequestError
from contract.tokenize_protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)

from .token_ids import check_in_vocabulary


def tokenize(tokenizer, request: TokenizeRequest, max_model_len: int | None, model_id: str,
             chat_ids: Callable[[TokenizeRequest], list[int]] | None = None) -> TokenizeResponse:
    """`chat_ids` renders request.messages as the task's chat endpoint does; a task without one
    refuses messages."""
    if request.messages is not None:
        if chat_ids is None:
            raise InvalidRequestError(f"Model '{model_id}' does not read chat messages; send prompt instead.",
                                      param="messages", code="chat_template_missing")
        ids = chat_ids(request)
    else:
        ids = tokenizer(request.prompt, add_special_tokens=request.special_tokens)["input_ids"]
    strs = tokenizer.convert_ids_to_tokens(ids) if request.return_token_strs else None
    return TokenizeResponse(count=len(ids), max_model_len=max_model_len, tokens=ids, token_strs=strs)


def detokenize(tokenizer, request: DetokenizeRequest) -> DetokenizeResponse:
    """The text of the ids, special tokens included (vLLM's detokenize), so it round-trips."""
    check_in_vocabulary(request.tokens, len(tokenizer), where="tokens", param="tokens")
    return DetokenizeResponse(prompt=tokenizer.decode(request.tokens))
