"""What this machine can do fast: CPU feature flags, the mixed precision they allow, a one-line description.

Code that picks a precision or a decoding path asks here, so the choice follows the CPU it runs on.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def resolve_mixed_precision(choice: str) -> str:
    """``auto`` becomes bf16 where the hardware is fast at it (recent GPUs; CPUs with AMX or AVX512-BF16)."""
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "no"


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo); empty where it cannot be read."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))


def cpu_has_fast_bf16() -> bool:
    flags = cpu_flags()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def cpu_has_avx2() -> bool:
    return "avx2" in cpu_flags()


def describe_hardware() -> str:
    """The device figures depend on, in words: the GPU's name, or the CPU's model and its bf16 features."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                platform.processor() or "unknown CPU")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    features = [shown for f, shown in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16"), ("avx2", "AVX2"))
                if f in flags]
    return f"{name} ({', '.join(features) or 'no AVX2'}, {os.cpu_count()} cores)"
