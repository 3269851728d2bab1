"""Tiny random models built at test time: a llama-like generator, a bert-like encoder and
bert-like sequence classifiers (a one-output cross-encoder and a labelled classifier).

They are real HF checkpoints (config, safetensors, fast tokenizer) that the real engines
load, export to OpenVINO and run; only the weights are random. Two properties make tests
deterministic:
- the generator's EOS logit is pinned to 0 (its lm_head row is zero), so greedy decoding
  never ends a sequence early and `finish_reason == "length"` is exact;
- everything is seeded.
"""

from __future__ import annotations

import json
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Ray Serve runs models as deployments; each deployment has replicas.",
    "OpenVINO runs neural networks fast on Intel and AMD processors.",
    "A quick brown fox jumps over the lazy dog near the river bank.",
    "Numbers like 0 1 2 3 4 5 6 7 8 9 and symbols like ! ? , . : ; - ( ) appear in text.",
    "Streaming responses send tokens to the client as soon as they are generated.",
    "Embeddings map sentences to vectors; similar sentences have similar vectors.",
] * 20


def build_tiny_llama(out: Path, *, max_position_embeddings: int = 512, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    out.mkdir(parents=True, exist_ok=True)
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    hf_tokenizer.chat_template = CHATML_TEMPLATE
    hf_tokenizer.model_max_length = max_position_embeddings
    hf_tokenizer.save_pretrained(str(out))

    eos_id = hf_tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(
        vocab_size=len(hf_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=False,
        bos_token_id=hf_tokenizer.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=eos_id,
        pad_token_id=hf_tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.5)  # larger than the default init: less repetitive text
        # A zero row gives logit 0 while the other logits are spread around 0, so greedy
        # decoding never picks these tokens: EOS (sequences never end early) and tokens that
        # are not printable ASCII on their own (greedy text stays readable).
        for token_id in range(len(hf_tokenizer)):
            text = hf_tokenizer.decode([token_id])
            if token_id == eos_id or token_id < len(special) or not (text.isascii() and text.isprintable()):
                model.lm_head.weight[token_id].zero_()
    model.generation_config = GenerationConfig(eos_token_id=eos_id, bos_token_id=config.bos_token_id, pad_token_id=config.pad_token_id)
    model.save_pretrained(str(out))
    return out


def _bert_tokenizer(out: Path, *, token_types: bool = False):
    """A WordPiece tokenizer over CORPUS's words with BERT's specials and pair template, saved to
    `out`; with `token_types` it returns token_type_ids (a pair's second text is segment 1)."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from transformers import PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    # The vocabulary is listed, not trained: WordPieceTrainer breaks frequency ties in hash order,
    # so a trained one (and every score of a model built on it) differed from process to process.
    # Every corpus word is one token; any other word of these characters is spelled out.
    words = sorted({word for text in CORPUS for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))})
    chars = sorted({c for word in words for c in word})
    pieces = special + chars + [f"##{c}" for c in chars] + [w for w in words if len(w) > 1]
    tokenizer = Tokenizer(models.WordPiece({piece: i for i, piece in enumerate(pieces)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.WordPiece()
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
        **({"model_input_names": ["input_ids", "token_type_ids", "attention_mask"]} if token_types else {}),
    )
    hf_tokenizer.model_max_length = 128
    hf_tokenizer.save_pretrained(str(out))
    return hf_tokenizer


def _bert_config(hf_tokenizer, **extra):
    from transformers import BertConfig

    shape = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, **extra}
    return BertConfig(
        vocab_size=len(hf_tokenizer),
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=hf_tokenizer.pad_token_id,
        **shape,
    )


# A one-layer BERT as wide as MiniLM (384): its answers at the documented maxima are as large as
# a real model's (2048 vectors of 384 floats are over gRPC's 4 MiB default).
WIDE = {"hidden_size": 384, "num_hidden_layers": 1, "num_attention_heads": 4}


def build_tiny_bert(out: Path, *, sentence_transformers_layout: bool = True, seed: int = 0, **shape) -> Path:
    import torch
    from transformers import BertModel

    out.mkdir(parents=True, exist_ok=True)
    hf_tokenizer = _bert_tokenizer(out)
    config = _bert_config(hf_tokenizer, **shape)
    torch.manual_seed(seed)
    BertModel(config, add_pooling_layer=False).save_pretrained(str(out))
    if sentence_transformers_layout:
        (out / "1_Pooling").mkdir(exist_ok=True)
        (out / "1_Pooling" / "config.json").write_text(
            json.dumps({"word_embedding_dimension": config.hidden_size, "pooling_mode_mean_tokens": True})
        )
        (out / "modules.json").write_text(
            json.dumps(
                [
                    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
                ]
            )
        )
        (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    return out


def build_tiny_bert_classifier(out: Path, *, labels: list[str] | None = None, seed: int = 0, **shape) -> Path:
    """A BertForSequenceClassification with BERT's pair tokenizer. Without `labels` it has one
    output, as a sentence-transformers CrossEncoder (a reranker) saves it; with them, one
    output per label and `id2label` naming them."""
    import torch
    from transformers import BertForSequenceClassification

    out.mkdir(parents=True, exist_ok=True)
    hf_tokenizer = _bert_tokenizer(out, token_types=True)
    if labels:
        config = _bert_config(hf_tokenizer, num_labels=len(labels), id2label=dict(enumerate(labels)),
                              label2id={label: i for i, label in enumerate(labels)}, **shape)
    else:
        config = _bert_config(hf_tokenizer, num_labels=1, **shape)
        config.sentence_transformers = {"activation_fn": "torch.nn.modules.activation.Sigmoid"}
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    with torch.no_grad():  # larger than the default init: scores spread over (0, 1), not all near one value
        for name, param in model.named_parameters():
            if "LayerNorm" not in name:
                param.normal_(0.0, 0.5)
    model.save_pretrained(str(out))
    return out
