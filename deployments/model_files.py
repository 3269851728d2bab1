"""What a task reads from a model's HF directory besides the weights: its tokenizer, the
tokens that end a turn, and its context length."""

from __future__ import annotations

import json
from pathlib import Path

_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def load_tokenizer(hf_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(hf_dir), use_fast=True)


def eos_token_ids(hf_dir: Path, tokenizer) -> list[int]:
    """Every token that ends a turn: generation_config's eos list plus the tokenizer's."""
    ids: set[int] = set()
    generation_config = Path(hf_dir) / "generation_config.json"
    if generation_config.exists():
        eos = json.loads(generation_config.read_text()).get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def context_length(hf_dir: Path, default: int) -> int:
    """The model's position limit from config.json, under whichever name its family uses."""
    config = json.loads((Path(hf_dir) / "config.json").read_text())
    for key in _CONTEXT_KEYS:
        if isinstance(config.get(key), int):
            return config[key]
    return default
