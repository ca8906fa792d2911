"""What this machine can do fast: CPU feature flags, the mixed precision they allow, a one-line description.

Code that picks a precision or a decoding path asks here, so the choice follows the CPU it runs on.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from personagpt.errors import SettingsError


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


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The torch device to run on: ``None`` is CUDA when this torch build and machine have it, else the CPU;
    ``gpu`` is ``cuda``. A GPU asked of a build without CUDA is a user's error that says how to get one."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = str(device).strip().lower()
    name = "cuda" + name[3:] if name.startswith("gpu") else name
    try:
        resolved = torch.device(name)
    except RuntimeError:
        raise SettingsError(f"--device {device!r} is not a device; use cpu, cuda (or gpu) or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        build = torch.__version__
        why = ("this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible")
        raise SettingsError(f"--device {device}: {why} (torch {build}). On a machine with an NVIDIA GPU, install "
                            "the CUDA build of torch 2.13.0 for its CUDA version (pytorch.org lists the pip command); "
                            "or leave --device out to run on the CPU")
    return resolved
