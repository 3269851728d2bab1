"""text-generation: /v1/chat/completions and /v1/completions over a GenerationEngine.

Owns everything textual: chat templates, tokenisation, context-length checks, sampling
defaults, incremental detokenisation, stop strings, n > 1, usage counts, and the shape of
responses and stream chunks. Engines only see token ids.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from contract.config import ModelAppArgs
from contract.engine import GenerationEngine, SamplingParams
from contract.errors import InvalidRequestError
from contract.model_api import EngineStats
from contract.model_cards import ModelCapabilities
from contract.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    SamplingFields,
    Usage,
    new_id,
    now,
)
from contract.tasks import TaskSpec
from contract.tokenize_protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)

from .. import tokenization
from ..chat_output import ChoiceOutput
from ..chat_tools import ToolMode, resolve_tool_parser, template_messages, template_tools, tool_mode
from ..choices import Choice, choices_for, run_concurrently
from ..engines.generation_engines import build_generation_engine
from ..logprob_entries import (
    ChatStreamLogprobs,
    CompletionOffsets,
    chat_logprobs,
    completion_logprobs,
)
from ..model_files import context_length, eos_token_ids, load_tokenizer
from ..sampling import check_request_fields, sampling_params
from ..serving_metrics import GenerationMeter, ReplicaMeter, metered
from ..text_stream import TextEvent, TextOptions, generate_text
from ..token_ids import check_in_vocabulary

logger = logging.getLogger("ray.serve")


class TextGenerationTask:
    embedding_dimensions = None

    def __init__(
        self,
        model_id: str,
        tokenizer,
        engine: GenerationEngine,
        *,
        max_model_len: int,
        default_max_tokens: int | None,
        stream_interval: int | str = 1,
        tool_parser: str | None = None,
        reasoning_parser: str | None = None,
    ):
        if not tokenizer.is_fast:
            raise ValueError(f"{model_id}: a fast (tokenizers) tokenizer is required")
        self.model_id = model_id
        self.tokenizer = tokenizer
        self.engine = engine
        self.max_model_len = max_model_len
        self.default_max_tokens = default_max_tokens
        self.stream_interval = stream_interval
        self._backend_tokenizer = tokenizer.backend_tokenizer
        self.tool_parser = resolve_tool_parser(tool_parser, tokenizer.chat_template)
        self.reasoning_parser = reasoning_parser
        self.capabilities = ModelCapabilities(structured_outputs=engine.supports_structured_output,
                                              logit_bias=engine.supports_logit_bias, tool_parser=self.tool_parser,
                                              reasoning_parser=reasoning_parser, logprobs=True,
                                              top_logprobs=engine.max_top_logprobs)
        self._vocab_size = len(tokenizer)
        self._meter: ReplicaMeter | None = None

    def attach_meter(self, meter: ReplicaMeter) -> None:
        """Record this task's serving metrics (and the engine's step sizes) through `meter`."""
        self._meter = meter
        if hasattr(self.engine, "on_step"):
            self.engine.on_step = meter.batch_observer("engine_step")

    # ------------------------------------------------------------------ public API

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletionResponse:
        prompt_text, prompt_ids, mode = self._chat_prompt(request)
        choices, texts, finishes, completion_tokens, tokens = await self._collect([prompt_ids], request, "messages")
        outputs = [ChoiceOutput(mode, self.reasoning_parser, prompt_text).message(texts[c.index], finishes[c.index])
                   for c in choices]
        return ChatCompletionResponse(
            id=new_id("chatcmpl"),
            created=now(),
            model=self.model_id,
            choices=[ChatChoice(index=c.index, message=message, finish_reason=finish, logprobs=chat_logprobs(tokens[c.index]))
                     for c, (message, finish) in zip(choices, outputs, strict=True)],
            usage=_usage(len(prompt_ids), completion_tokens),
        )

    async def chat_stream(self, request: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        prompt_text, prompt_ids, mode = self._chat_prompt(request)
        choices = choices_for(1, request.n)
        outputs = {c.index: ChoiceOutput(mode, self.reasoning_parser, prompt_text) for c in choices}
        params = [self._sampling(request, len(prompt_ids), "messages", c) for c in choices]
        chunk_id, created = new_id("chatcmpl"), now()
        usage = _StreamUsage(len(prompt_ids), request)
        logprobs = ChatStreamLogprobs(bool(request.logprobs))

        def chunk(choice: int, delta: ChatDelta, finish: str | None = None) -> ChatCompletionChunk:
            return ChatCompletionChunk(
                id=chunk_id,
                created=created,
                model=self.model_id,
                choices=[ChatChunkChoice(index=choice, delta=delta, finish_reason=finish,
                                         logprobs=None if delta.role else logprobs.take(choice))],
                usage=usage.continuous(),
            )

        opened: set[int] = set()
        async for choice, event in self._run(choices, [prompt_ids], params, request):
            if choice.index not in opened:
                # OpenAI opens every choice with a role-only delta. It goes with the choice's
                # first token, as vLLM sends it: sent before, it would hold back the engine
                # (Serve asks this generator for more only once a chunk is on its way) and
                # its trip would share the cores with the prefill (docs/performance.md).
                opened.add(choice.index)
                yield chunk(choice.index, ChatDelta(role="assistant", content=""))
            usage.update(choice.index, event.completion_tokens)
            logprobs.add(choice.index, event.tokens)
            output = outputs[choice.index]
            if event.text and (delta := output.feed(event.text)) is not None:
                yield chunk(choice.index, delta)
            if event.finish_reason is not None:
                delta, finish = output.finish(event.finish_reason)
                if delta is not None:
                    yield chunk(choice.index, delta)
                yield chunk(choice.index, ChatDelta(), finish)
        if request.include_usage_in_stream:
            yield ChatCompletionChunk(id=chunk_id, created=created, model=self.model_id, choices=[], usage=usage.total())

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        prompts = self._completion_prompt_ids(request)
        choices, texts, finishes, completion_tokens, tokens = await self._collect(prompts, request, "prompt")
        prefixes = self._echo_prefixes(request, prompts)
        return CompletionResponse(
            id=new_id("cmpl"),
            created=now(),
            model=self.model_id,
            choices=[
                CompletionChoice(
                    index=c.index, text=prefixes[c.prompt_index] + texts[c.index], finish_reason=finishes[c.index],
                    logprobs=completion_logprobs(tokens[c.index]),  # at offset 0: echo with logprobs is refused
                )
                for c in choices
            ],
            usage=_usage(sum(len(p) for p in prompts), completion_tokens),
        )

    async def complete_stream(self, request: CompletionRequest) -> AsyncIterator[CompletionResponse]:
        prompts = self._completion_prompt_ids(request)
        choices = choices_for(len(prompts), request.n)
        params = [self._sampling(request, len(prompts[c.prompt_index]), "prompt", c) for c in choices]
        prefixes = self._echo_prefixes(request, prompts)
        chunk_id, created = new_id("cmpl"), now()
        usage = _StreamUsage(sum(len(p) for p in prompts), request)
        offsets = CompletionOffsets()

        def chunk(choice: int, text: str, finish: str | None = None, tokens=None) -> CompletionResponse:
            return CompletionResponse(
                id=chunk_id, created=created, model=self.model_id,
                choices=[CompletionChoice(index=choice, text=text, finish_reason=finish,
                                          logprobs=offsets.logprobs(choice, tokens))],
                usage=usage.continuous(),
            )

        opened: set[int] = set()
        async for choice, event in self._run(choices, prompts, params, request):
            if choice.index not in opened:  # the echoed prompt goes with the first token, as chat's role delta
                opened.add(choice.index)
                if prefixes[choice.prompt_index]:
                    yield chunk(choice.index, prefixes[choice.prompt_index])
            usage.update(choice.index, event.completion_tokens)
            if event.finish_reason is not None or event.text or event.tokens:
                yield chunk(choice.index, event.text, event.finish_reason, event.tokens)
        if request.include_usage_in_stream:
            yield CompletionResponse(id=chunk_id, created=created, model=self.model_id, choices=[], usage=usage.total())

    async def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        """The ids of a prompt, or of messages rendered as chat renders them."""
        def chat_ids(r: TokenizeRequest) -> list[int]:
            chat = ChatCompletionRequest.model_construct(model=r.model, messages=r.messages)  # validated as r was
            return self._chat_prompt_ids(chat, add_generation_prompt=r.add_generation_prompt,
                                         add_special_tokens=r.special_tokens)[1]

        return tokenization.tokenize(self.tokenizer, request, self.max_model_len, self.model_id, chat_ids)

    async def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        return tokenization.detokenize(self.tokenizer, request)

    def stats(self) -> EngineStats:
        return self.engine.stats()

    def check_health(self) -> None:
        self.engine.check_health()

    def shutdown(self) -> None:
        self.engine.shutdown()

    def _chunk_tokens(self) -> int:
        if self.stream_interval != "auto":
            return int(self.stream_interval)
        # One token per chunk for a lone stream; up to 8 when 16 or more share the engine.
        return max(1, min(8, self.engine.running() // 2))

    # ------------------------------------------------------------------ prompts

    def _chat_prompt(self, request: ChatCompletionRequest) -> tuple[str, list[int], ToolMode]:
        """The rendered prompt, its ids, and how the output becomes tool calls."""
        mode = tool_mode(request, self.engine, self.model_id, self.tool_parser)
        self._check_request_fields(request)
        return *self._chat_prompt_ids(request, checked=True), mode

    def _chat_prompt_ids(self, request: ChatCompletionRequest, *, add_generation_prompt: bool = True,
                         add_special_tokens: bool = False, checked: bool = False) -> tuple[str, list[int]]:
        if not checked:
            self._check_request_fields(request)
        if not self.tokenizer.chat_template:
            raise InvalidRequestError(
                f"Model '{self.model_id}' has no chat template; use /v1/completions instead.",
                param="messages",
                code="chat_template_missing",
            )
        messages = template_messages(request, self.tokenizer.chat_template)
        try:
            prompt = self.tokenizer.apply_chat_template(messages, tools=template_tools(request), tokenize=False,
                                                        add_generation_prompt=add_generation_prompt)
        except Exception as exc:  # jinja raises TemplateError for e.g. bad role order
            raise InvalidRequestError(f"The messages do not fit the model's chat template: {exc}", param="messages") from exc
        # The template already contains any BOS the model wants (/tokenize may ask for more).
        return prompt, self.tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]

    def _completion_prompt_ids(self, request: CompletionRequest) -> list[list[int]]:
        self._check_request_fields(request)
        out = []
        for prompt in request.prompts():
            if isinstance(prompt, str):
                ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
                if not ids:
                    raise InvalidRequestError("prompt must not be empty", param="prompt")
            else:
                check_in_vocabulary(prompt, self._vocab_size, where="prompt", param="prompt")
                ids = list(prompt)
            out.append(ids)
        return out

    def _echo_prefixes(self, request: CompletionRequest, prompts: list[list[int]]) -> list[str]:
        if not request.echo:
            return [""] * len(prompts)
        originals = request.prompts()
        return [
            original if isinstance(original, str) else self.tokenizer.decode(ids, skip_special_tokens=True)
            for original, ids in zip(originals, prompts, strict=True)
        ]

    # ------------------------------------------------------------------ sampling

    def _sampling(self, request: SamplingFields, prompt_len: int, param: str, choice: Choice) -> SamplingParams:
        return sampling_params(request, prompt_len, param, choice.sample, max_model_len=self.max_model_len,
                               default_max_tokens=self.default_max_tokens)

    def _check_request_fields(self, request: SamplingFields) -> None:
        check_request_fields(request, self.engine, self.model_id, self._vocab_size)

    # ------------------------------------------------------------------ running sequences

    async def _collect(self, prompts: list[list[int]], request: SamplingFields, param: str):
        choices = choices_for(len(prompts), request.n)
        params = [self._sampling(request, len(prompts[c.prompt_index]), param, c) for c in choices]
        texts = [""] * len(choices)
        finishes: list[str] = ["stop"] * len(choices)
        tokens: list[list | None] = [None if p.logprobs is None else [] for p in params]  # entries for logprobs
        completion_tokens = 0
        async for choice, event in self._run(choices, prompts, params, request):
            texts[choice.index] += event.text
            if event.tokens is not None:
                tokens[choice.index].extend(event.tokens)
            if event.finish_reason is not None:
                finishes[choice.index] = event.finish_reason
                completion_tokens += event.completion_tokens
        return choices, texts, finishes, completion_tokens, tokens

    def _run(
        self, choices: list[Choice], prompts: list[list[int]], params: list[SamplingParams], request: SamplingFields
    ) -> AsyncIterator[tuple[Choice, TextEvent]]:
        sampling = {choice.index: p for choice, p in zip(choices, params, strict=True)}
        text = TextOptions(stop=tuple(request.stop or ()), include_stop=request.include_stop_str_in_output,
                           skip_special_tokens=request.skip_special_tokens, min_tokens=request.min_tokens)

        def start(choice: Choice) -> AsyncIterator[TextEvent]:
            return generate_text(
                self.engine, self._backend_tokenizer, prompts[choice.prompt_index], sampling[choice.index], text,
                self._chunk_tokens,
            )

        events = run_concurrently(choices, start)
        if self._meter is None or not self._meter.metrics.enabled:
            return events
        meter = GenerationMeter(self._meter.metrics, self.model_id, sum(len(p) for p in prompts))
        return metered(events, meter, lambda event: event.completion_tokens)


class _StreamUsage:
    """Token counts of a stream so far, across its choices."""

    def __init__(self, prompt_tokens: int, request: SamplingFields):
        self.prompt_tokens = prompt_tokens
        self._per_choice: dict[int, int] = {}
        options = request.stream_options
        self._continuous = bool(options and options.continuous_usage_stats)

    def update(self, choice: int, completion_tokens: int) -> None:
        self._per_choice[choice] = completion_tokens

    def total(self) -> Usage:
        return _usage(self.prompt_tokens, sum(self._per_choice.values()))

    def continuous(self) -> Usage | None:
        return self.total() if self._continuous else None


def _usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


# ----------------------------------------------------------------------------- loading


def load(model_id: str, args: ModelAppArgs, prepared, backend) -> TextGenerationTask:
    tokenizer = load_tokenizer(prepared.hf_dir)
    eos = eos_token_ids(prepared.hf_dir, tokenizer)
    max_model_len = args.max_model_len or context_length(prepared.hf_dir, default=2048)
    engine = build_generation_engine(args, prepared, backend, tokenizer, eos, max_model_len)
    logger.info("%s: %s engine on %s, context %d tokens", model_id, engine.name, engine.device, max_model_len)
    return TextGenerationTask(
        model_id,
        tokenizer,
        engine,
        max_model_len=max_model_len,
        default_max_tokens=args.default_max_tokens,
        stream_interval=args.stream_interval,
        tool_parser=args.tool_parser,
        reasoning_parser=args.reasoning_parser,
    )



# Architectures with a language-modelling head that AutoModelForCausalLM loads (LlamaForCausalLM,
# GPT2LMHeadModel, ...). Encoder-decoders (T5WithLMHeadModel, ...ForConditionalGeneration) are not.
CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def claims(config: dict, files: frozenset[str]) -> bool:
    """A causal LM, or a GGUF file (llama.cpp's format is for generators, and its config only
    exists once converted, which is done as a causal LM)."""
    if any(name.lower().endswith(".gguf") for name in files):
        return True
    return any(
        str(name).endswith(CAUSAL_LM_SUFFIXES) and "WithLMHead" not in str(name)
        for name in config.get("architectures") or []
    )


def _check_args(args: ModelAppArgs) -> None:
    if args.default_max_tokens and args.max_model_len and args.default_max_tokens >= args.max_model_len:
        raise ValueError("default_max_tokens must be smaller than max_model_len")
    if args.backend == "vllm" and args.num_threads is not None:
        raise ValueError("num_threads: vLLM places its own CPU threads; set VLLM_CPU_OMP_THREADS_BIND in the "
                         "application's runtime_env env_vars instead")


TASK = TaskSpec(
    name="text-generation",
    summary="chat and text completions (/v1/chat/completions, /v1/completions), streamed or whole",
    endpoints=("chat", "complete", "tokenize", "detokenize"),
    load=load,
    hf_task="text-generation",
    fields=frozenset({
        "max_model_len", "default_max_tokens", "max_num_seqs", "max_num_batched_tokens", "kv_cache_gb",
        "stream_interval", "enable_prefix_caching", "tool_parser", "reasoning_parser", "inference_precision",
    }),
    check=_check_args,
    claims=claims,
    engines=(
        ("openvino", "OpenVINO GenAI continuous batching (engine-core process)"),
        ("transformers", "transformers continuous batching (paged KV cache, in the replica)"),
        ("vllm", "vLLM AsyncLLM (engine-core process; vLLM on the node or in a runtime_env)"),
    ),
)
