"""Where one decoding step's time goes on this CPU, against the memory-bandwidth floor.

The bundled model on the fast path this CPU gets (int8 where bf16 is fast), one sequence, a prompt of ``--prompt``
tokens, then ``--steps`` greedy steps: wall time per step, then the same steps under torch.profiler with each
operator's own CPU time summed into products (the int8 or fp32 matrix products), attention, casts and copies,
norms and element-wise work, and the rest; what the profiler does not see of the wall time is Python and dispatch
overhead. The floor: the bytes of weights a step reads (every linear layer's weights and scales, the head; the
embedding row is one row) over the machine's read bandwidth, measured with a sum over a 1 GiB tensor (best of 5).

    python bench/step_profile.py [--prompt 81] [--steps 64] [--out bench/results/step_profile.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch

from personagpt.generate.kvcache import ReservedCache
from personagpt.models.fastpath import _Linear, choose_fast_path, fast_decoder
from personagpt.models.hardware import describe_hardware
from personagpt.models.load import load_chat_model

GROUPS = [("products", ("int8pack", "aten::mm", "aten::addmm", "aten::linear", "aten::matmul", "aten::bmm")),
          ("attention", ("scaled_dot_product", "softmax", "flash")),
          ("casts and copies", ("aten::to", "aten::_to_copy", "aten::copy_", "aten::contiguous", "aten::clone",
                                "aten::cat", "aten::index", "aten::slice_scatter", "aten::index_put")),
          ("norms and element-wise", ("norm", "aten::mul", "aten::add", "aten::silu", "aten::gelu", "aten::neg",
                                      "aten::sub", "aten::div", "aten::rsqrt", "aten::pow", "aten::mean"))]


def read_bandwidth() -> float:
    """GB/s of a sum over a 1 GiB tensor (best of 5)."""
    data = torch.ones(1 << 28, dtype=torch.float32)  # 1 GiB
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - started)
    return data.nbytes / best / 1e9


def weight_bytes(decoder) -> int:
    """Bytes a step reads: every linear layer's weights (and scales), the norms, one embedding row."""
    total = 0
    linears = [decoder.head] + [lin for layer in decoder.layers
                                for lin in (*layer.qkv, layer.out, *layer.gate_up, layer.down)]
    for linear in linears:
        assert isinstance(linear, _Linear)
        weight = linear.weight if linear.int8 else linear.weight_t
        total += weight.nbytes + (linear.scale.nbytes if linear.int8 else 0)
        total += linear.bias.nbytes if linear.bias is not None else 0
    return total + decoder.embed[0].nbytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=81)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("bench/results/step_profile.json"))
    args = parser.parse_args()
    model, fmt = load_chat_model(None)
    model.eval()
    choice = choose_fast_path(None, model)
    decoder = fast_decoder(model)
    prompt = torch.randint(0, 40000, (1, args.prompt))

    def run_steps(count: int) -> float:
        cache = ReservedCache()
        with torch.inference_mode():
            out = decoder(prompt, cache=cache, logits_to_keep=1)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            started = time.perf_counter()
            for _ in range(count):
                out = decoder(token, cache=cache, logits_to_keep=1)
                token = out.logits[:, -1].argmax(-1, keepdim=True)
            return (time.perf_counter() - started) / count

    run_steps(8)  # warm-up
    wall = min(run_steps(args.steps) for _ in range(3))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        profiled = run_steps(args.steps)
    per_group: dict[str, float] = defaultdict(float)
    top = []
    for event in profiler.key_averages():
        self_ms = event.self_cpu_time_total / 1000 / (args.steps + 1)  # the prefill is in it too: small per step
        group = next((g for g, keys in GROUPS if any(k in event.key for k in keys)), "other operators")
        per_group[group] += self_ms
        top.append((self_ms, event.key, event.count))
    seen = sum(per_group.values())
    bandwidth = read_bandwidth()
    nbytes = weight_bytes(decoder)
    result = {
        "cpu": describe_hardware(), "decoding": choice.describe(), "prompt_tokens": args.prompt,
        "ms_per_step": 1000 * wall, "ms_per_step_profiled": 1000 * profiled,
        "groups_ms": {g: round(v, 3) for g, v in sorted(per_group.items(), key=lambda kv: -kv[1])},
        "python_and_dispatch_ms": round(1000 * profiled - seen, 3),
        "top_operators": [{"op": k, "ms_per_step": round(ms, 3), "calls": c} for ms, k, c in sorted(top)[::-1][:12]],
        "weight_megabytes": nbytes / 1e6, "read_bandwidth_gbs": bandwidth,
        "bandwidth_floor_ms": 1000 * nbytes / (bandwidth * 1e9),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
