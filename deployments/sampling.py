"""From a generation request to what the engine samples with: the completion's length within
the context, per-choice seeds, and the checks of the fields an engine could not survive or could
not honour (token ids outside the vocabulary, logit_bias or a structured output on an engine
without them, a constraint that does not compile, more alternative tokens than the engine gives):
each a 400 naming its field."""

from __future__ import annotations

from contract.engine import GenerationEngine, SamplingParams
from contract.errors import ContextLengthExceededError, InvalidRequestError
from contract.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields

from . import grammars
from .token_ids import check_in_vocabulary

MIN_TOP_P = 1e-6


def sampling_params(request: SamplingFields, prompt_len: int, param: str, sample: int, *, max_model_len: int,
                    default_max_tokens: int | None) -> SamplingParams:
    """The engine's parameters for one choice (`sample`: its number among the prompt's choices)."""
    requested = request.requested_max_tokens
    room = max_model_len - prompt_len
    if requested is not None and prompt_len + requested > max_model_len:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_len + requested} tokens ({prompt_len} in the {param}, {requested} "
            f"in the completion). Please reduce the length of the {param} or completion.",
            param=param,
        )
    if room < 1:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"{param} resulted in {prompt_len} tokens. Please reduce the length of the {param}.",
            param=param,
        )
    max_tokens = requested if requested is not None else min(room, default_max_tokens or room)
    if request.min_tokens > max_tokens:
        raise InvalidRequestError(
            f"min_tokens is {request.min_tokens}, more than the {max_tokens} tokens this completion may have.",
            param="min_tokens",
        )
    seed = request.seed
    if seed is not None:
        # Distinct but reproducible samples for n > 1 with a fixed seed; 63 bits for engines.
        seed = (seed + sample) % 2**63
    constrained = request.constraint()
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=request.temperature,
        # Engines keep top_p in float32, where a tiny positive top_p (5e-324) is 0 and
        # refused; below MIN_TOP_P the nucleus is the most likely token either way.
        top_p=max(request.top_p, MIN_TOP_P),
        seed=seed,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        stop_token_ids=tuple(request.stop_token_ids or ()),
        top_k=max(request.top_k, 0),
        min_p=request.min_p,
        repetition_penalty=request.repetition_penalty,
        min_tokens=request.min_tokens,
        ignore_eos=request.ignore_eos,
        logit_bias=tuple((int(token), float(bias)) for token, bias in (request.logit_bias or {}).items()),
        constraint=constrained[0] if constrained else None,
        logprobs=None if (asked := requested_logprobs(request)) is None else asked[0],
    )


def requested_logprobs(request: SamplingFields) -> tuple[int, str] | None:
    """The alternatives per token a request wants with its tokens' log-probabilities, and the field
    that says how many (chat: top_logprobs; completions: logprobs); None when it wants none."""
    if isinstance(request, ChatCompletionRequest):
        return (request.top_logprobs or 0, "top_logprobs") if request.logprobs else None
    if isinstance(request, CompletionRequest) and request.logprobs is not None:
        return request.logprobs, "logprobs"
    return None


def check_request_fields(request: SamplingFields, engine: GenerationEngine, model_id: str, vocab_size: int) -> None:
    """Token ids the client named must exist, a logit_bias needs an engine that applies it, a
    structured output one that enforces it and a constraint that compiles, and alternative tokens
    an engine that gives them."""
    if (constrained := request.constraint()) is not None:
        constraint, param = constrained
        if not engine.supports_structured_output:
            raise InvalidRequestError(
                f"Structured outputs are not supported by model '{model_id}': {engine.why_unstructured}",
                param=param, code="unsupported_parameter",
            )
        grammars.check(constraint, param)
    if request.stop_token_ids:
        check_in_vocabulary(request.stop_token_ids, vocab_size, where="stop_token_ids", param="stop_token_ids")
    if request.logit_bias:
        if not engine.supports_logit_bias:
            raise InvalidRequestError(
                f"logit_bias is not supported by model '{model_id}': its {engine.name} engine cannot apply it.",
                param="logit_bias", code="unsupported_parameter",
            )
        check_in_vocabulary([int(token) for token in request.logit_bias], vocab_size, where="logit_bias",
                            param="logit_bias")
    if (asked := requested_logprobs(request)) is not None:
        _check_logprobs(request, *asked, engine, model_id)


def _check_logprobs(request: SamplingFields, alternatives: int, param: str, engine: GenerationEngine,
                    model_id: str) -> None:
    if alternatives > engine.max_top_logprobs:
        gives = (f"at most {engine.max_top_logprobs} alternative tokens" if engine.max_top_logprobs
                 else f"the sampled token's log-probability only ({param} 0)")
        raise InvalidRequestError(
            f"{param} {alternatives} is not supported by model '{model_id}': its {engine.name} engine gives {gives}.",
            param=param, code="unsupported_parameter",
        )
    if isinstance(request, CompletionRequest) and request.echo:
        raise InvalidRequestError(
            "echo with logprobs is not supported: the prompt's log-probabilities are not computed.",
            param="echo", code="unsupported_parameter",
        )
