"""``personagpt export``: the model for other engines (vLLM and TGI read ``hf``; llama.cpp and Ollama ``gguf``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from personagpt.cli.common import UserError, friendly_errors, load
from personagpt.cli.options import DeviceOpt, ModelOpt


def export(
    out: Annotated[Path, typer.Option("--out", help="Directory (hf) or .gguf file (gguf) to write.")],
    model: ModelOpt = None,
    format: Annotated[str, typer.Option("--format", help="hf: a merged safetensors checkpoint; gguf: one GGUF file.")]
    = "hf",
    dtype: Annotated[Optional[str], typer.Option(help="hf: float32 (default), float16, bfloat16; gguf: f16 (default), "
                                                      "bf16, f32, q8_0.")] = None,
    device: DeviceOpt = None,
) -> None:
    """Export the model with the PersonaGPT chat template, LoRA adapters merged in.

    Engines that build prompts from OpenAI messages with the tokenizer's chat template (vLLM, TGI, llama.cpp,
    Ollama) then prompt it in the format it was trained on: the system message gives the persona facts, one per
    line, and a system line 'goal: TEXT' steers the next reply.
    """
    with friendly_errors():
        from personagpt.models.export import GGUF_DTYPES, HF_DTYPES, export_gguf, export_hf

        if format not in ("hf", "gguf"):
            raise UserError("--format must be hf or gguf")
        allowed = list(HF_DTYPES) if format == "hf" else list(GGUF_DTYPES)
        if dtype is not None and dtype not in allowed:  # checked before the model loads
            raise UserError(f"--dtype for {format} must be one of {', '.join(allowed)}, not {dtype!r}")
        if out.exists() and (out.is_dir() if format == "gguf" and out.suffix == ".gguf" else
                             format == "hf" and not out.is_dir()):
            raise UserError(f"{out}: exists and is not a {'directory' if format == 'hf' else 'file'}")
        loaded, fmt = load(model, device)
        if format == "hf":
            path = export_hf(loaded, fmt, out, dtype or "float32")
        else:
            typer.echo("Writing GGUF (a few seconds per 100M parameters) ...", err=True)
            path = export_gguf(loaded, fmt, out, dtype or "f16")
        typer.echo(f"Wrote {path}")
