"""The precision a model scores and generates in, chosen by the hardware (bf16 where it is fast)."""

from __future__ import annotations

import copy
from contextlib import nullcontext

import torch

from personagpt.models.fastpath import choose_fast_path, fast_decoder
from personagpt.models.hardware import resolve_mixed_precision


def inference_autocast(model, precision: str = "auto"):
    """Autocast for scoring and generation: bf16 matmuls run 3-4x faster than fp32 on an AMX CPU, and change
    perplexities by well under 1%. ``no`` keeps full precision."""
    mode = resolve_mixed_precision(precision)
    if mode == "no" or model.dtype != torch.float32:
        return nullcontext()
    return torch.autocast(model.device.type, dtype=torch.bfloat16 if mode == "bf16" else torch.float16)


def generation_model(model, precision: str = "auto"):
    """``(model, autocast)`` to generate with.

    Scoring is fastest under autocast over fp32 weights, but a decoding step gains nothing from it.
    ``bench/precision.py`` on the 2-core AMX CPU (SmolLM2-135M, 64 rows): 141 ms a step in fp32, 132 ms under
    autocast, 78 ms with bf16 weights. So on a CPU, bf16 generation runs on a bf16 copy of the model.
    """
    mode = resolve_mixed_precision(precision)
    if fast_decoder(model) is not model:  # the cached decoding loops run on the fast path: no copy needed
        return model, nullcontext()
    if mode == "bf16" and model.device.type == "cpu" and model.dtype == torch.float32:
        return copy.deepcopy(model).to(torch.bfloat16), nullcontext()
    return model, inference_autocast(model, precision)


def serving_model(model, precision: str = "auto", fmt=None):
    """The model a server decodes with, converted in place: bf16 weights where the CPU (or GPU) is fast at bf16
    (half the bytes read per token), else as loaded. ``no`` keeps fp32. Given ``fmt``, an engine's llama.cpp
    backend gets its GGUF export from the weights as loaded too."""
    if choose_fast_path(None, model).mode == "int8":  # its int8 weights come from the weights as loaded
        fast_decoder(model)
    if fmt is not None:
        from personagpt.generate.slots import choose_backend

        if choose_backend(None, model)[0] == "llama.cpp":
            from personagpt.generate.llamacpp import cached_gguf

            cached_gguf(model, fmt)
    mode = resolve_mixed_precision(precision)
    if mode == "bf16" and model.dtype == torch.float32:
        return model.to(torch.bfloat16)
    return model
