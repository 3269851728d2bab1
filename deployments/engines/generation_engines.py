"""The generation engine a model runs on, from the backend its node was chosen for: each
engine's module is imported only when it is chosen (vLLM and OpenVINO may be absent)."""

from __future__ import annotations

from contract.config import ModelAppArgs
from contract.engine import GenerationEngine


def build_generation_engine(args: ModelAppArgs, prepared, backend, tokenizer, eos: list[int],
                            max_model_len: int) -> GenerationEngine:
    if backend.backend == "openvino":
        from .openvino_genai import OpenVINOGenerationEngine, add_openvino_tokenizer

        engine = OpenVINOGenerationEngine(
            prepared.openvino_dir,
            eos_token_ids=eos,
            why_unstructured=add_openvino_tokenizer(prepared.openvino_dir, tokenizer),
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            kv_cache_gb=args.kv_cache_gb,
            enable_prefix_caching=args.enable_prefix_caching,
            num_threads=args.num_threads,
            device=backend.device.upper(),
            exact=args.inference_precision == "f32",
        )
    elif backend.backend == "vllm":
        from .vllm_generation import VLLMGenerationEngine, assigned_gpu_share

        engine = VLLMGenerationEngine(
            prepared.hf_dir,
            eos_token_ids=eos,
            device=backend.device,
            dtype="float32" if args.inference_precision == "f32" else "auto",
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            kv_cache_gb=args.kv_cache_gb,
            max_model_len=max_model_len,
            enable_prefix_caching=args.enable_prefix_caching,
            gpu_memory_utilization=assigned_gpu_share() if backend.device == "cuda" else None,
        )
    else:
        from .transformers_generation import TransformersGenerationEngine

        engine = TransformersGenerationEngine(
            prepared.hf_dir,
            tokenizer,
            eos_token_ids=eos,
            device=backend.device,
            dtype=backend.dtype,
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            kv_cache_gb=args.kv_cache_gb,
            max_model_len=max_model_len,
            num_threads=args.num_threads,
        )
    return engine
