"""Where bf16 pays on a CPU: one prefill and one decoding step of a model, in fp32, under bf16 autocast, and with
bf16 weights. Decides ``personagpt.models.precision.generation_model`` (generate on a bf16 copy) and the evaluator's
autocast for scoring.

    python bench/precision.py [--model PATH_OR_NAME] [--rows 64] [--context 150]
"""

from __future__ import annotations

import argparse
import time

import torch
import transformers

from personagpt.generate.kvcache import ReservedCache
from personagpt.models.load import default_model, load_model


@torch.inference_mode()
def measure(model, rows: int, context: int, autocast: bool, steps: int = 10) -> tuple[float, float]:
    ids = torch.randint(0, model.config.vocab_size - 10, (rows, context))
    token = torch.randint(0, model.config.vocab_size - 10, (rows, 1))
    cache = ReservedCache()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        start = time.perf_counter()
        model(ids, cache=cache, use_cache=True, logits_to_keep=1)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(steps):
            model(token, cache=cache, use_cache=True)
        step = (time.perf_counter() - start) / steps
    return prefill, step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: the bundled model (LoRA merged)")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--context", type=int, default=150)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    model, _ = load_model(args.model or default_model(), merge_adapter=True, device="cpu")
    print(f"{args.rows} rows, {args.context}-token prefill, torch threads: {torch.get_num_threads()}")
    print("| weights | autocast | prefill (ms) | prefill tokens/s | decoding step (ms) |")
    print("|---|---|---:|---:|---:|")
    for label, dtype, autocast in [("fp32", torch.float32, False), ("fp32", torch.float32, True),
                                   ("bf16", torch.bfloat16, False)]:
        model.to(dtype)
        measure(model, 2, 16, autocast)  # warm-up
        prefill, step = measure(model, args.rows, args.context, autocast)
        print(f"| {label} | {'bf16' if autocast else 'no'} | {prefill * 1000:.0f} | "
              f"{args.rows * args.context / prefill:.0f} | {step * 1000:.1f} |")


if __name__ == "__main__":
    main()
