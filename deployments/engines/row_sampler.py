"""One sequence's next token from its logits, with its own sampling parameters: the per-request
sampling of the transformers engine, whose continuous-batching manager has one generation
config for every request."""

from __future__ import annotations

import random

from contract.engine import SamplingParams, TokenLogprob

from ..grammars import TokenMask


class RowSampler:
    """One sequence's next token from its logits, in vLLM's order: logit_bias; EOS and the stop
    ids held back until min_tokens; repetition, presence and frequency penalties; then greedy,
    or transformers' temperature, top-k, top-p and min-p warpers and a seeded draw. Log-probabilities,
    when asked, are read from the row as the model gave it (vLLM's raw_logprobs)."""

    def __init__(self, torch, params: SamplingParams, eos: set[int], device: str, mask: TokenMask | None = None):
        from transformers.generation.logits_process import (
            LogitsProcessorList,
            MinPLogitsWarper,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self._torch, self.params, self._device, self.mask = torch, params, device, mask
        self._bias = [(torch.tensor([t for t, _ in params.logit_bias], device=device),
                       torch.tensor([b for _, b in params.logit_bias], device=device))] if params.logit_bias else []
        held = (set() if params.ignore_eos else eos) | set(params.stop_token_ids)
        self._held = torch.tensor(sorted(held), device=device) if params.min_tokens and held else None
        self._repetition = (RepetitionPenaltyLogitsProcessor(params.repetition_penalty)
                            if params.repetition_penalty != 1.0 else None)
        warpers = LogitsProcessorList()
        if not params.greedy:
            warpers.append(TemperatureLogitsWarper(params.temperature))
            if params.top_k > 0:
                warpers.append(TopKLogitsWarper(params.top_k))
            if params.top_p < 1.0:
                warpers.append(TopPLogitsWarper(params.top_p))
            if params.min_p > 0.0:
                warpers.append(MinPLogitsWarper(params.min_p))
        self._warpers = warpers
        self._no_ids = torch.zeros((1, 0), dtype=torch.long, device=device)
        self._generator = None
        if not params.greedy:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(params.seed if params.seed is not None else random.getrandbits(63))

    def next_token(self, logits, prompt_ids: list[int], generated: list[int]) -> int:
        torch, params = self._torch, self.params
        logits = logits.clone()
        if self.mask is not None:  # first, as vLLM applies it: what the constraint forbids is out
            self.mask.apply(logits)
        for ids, biases in self._bias:
            logits[ids] += biases
        if self._held is not None and len(generated) < params.min_tokens:
            logits[self._held] = -float("inf")
        seen = self._no_ids  # the warpers do not read the sequence: built only for the penalty
        if self._repetition is not None:  # the prompt's tokens count too, as in vLLM and transformers
            seen = torch.tensor([prompt_ids + generated], device=self._device)
            logits = self._repetition(seen, logits[None])[0]
        if generated and (params.presence_penalty or params.frequency_penalty):
            # OpenAI semantics: these penalties count the tokens generated so far.
            counts = torch.bincount(torch.tensor(generated, device=logits.device), minlength=logits.shape[-1])[
                : logits.shape[-1]].to(logits.dtype)
            logits = logits - params.frequency_penalty * counts - params.presence_penalty * (counts > 0)
        if params.greedy:
            token = int(torch.argmax(logits))
        else:
            logits = self._warpers(seen, logits[None])[0]
            token = int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=self._generator))
        if self.mask is not None:
            self.mask.accept(token)
        return token

    def logprobs(self, logits, token: int) -> TokenLogprob:
        """`token`'s log-probability in the model's row `logits` (before next_token's changes), and
        the params.logprobs likeliest tokens'."""
        logprobs = self._torch.log_softmax(logits.float(), dim=-1)
        top: tuple[tuple[int, float], ...] = ()
        if self.params.logprobs:
            values, ids = self._torch.topk(logprobs, min(self.params.logprobs, logprobs.shape[-1]))
            top = tuple(zip(ids.tolist(), values.tolist(), strict=True))
        return TokenLogprob(float(logprobs[token]), top)
