"""Per-turn latency of an 8-turn scripted conversation: our KV-cached session against the original approach.

The original PersonaGPT re-encodes ``persona + whole history`` and calls ``model.generate`` from scratch every
turn. Both sides use the same model (a random 6-layer / 384-wide GPT-2 on the GPT-2 vocabulary), the same
seed and the same scripted user turns (a real validation dialogue), and generate exactly the same number of
tokens per turn, so the difference is only how the context and the decoding steps are handled.

By default each bot turn generates exactly as many tokens as the gold reply at that point of the dialogue (what
a trained model's replies look like); ``--new-tokens N`` fixes every reply at N tokens instead.

Ours runs twice: eager, and with ``compile=True`` (the single-token forward under ``torch.compile`` over a static
cache). Every side is warmed up on a full conversation first (for the compiled side that is the compilation,
whose time is printed); then the sides alternate, one conversation each, so drifts in machine load hit all three.

``--precision bf16`` runs both sides under bf16 autocast (it makes single-token decoding slower on a CPU).

``--steps`` also times single decoding steps at a 250-token context: eager with our cache, and compiled over a
512-slot static cache (what a turn is made of once the context is cached).

``--model bundled`` (or any name/path) measures that model instead of the random GPT-2.

    python bench/generation.py [--repeats 5] [--new-tokens N] [--precision no|bf16] [--model NAME] [--steps]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import transformers
from transformers import StaticCache

from personagpt.data.dialogues import load_dialogues
from personagpt.format import PromptFormat
from personagpt.generate.conversation import Conversation, SamplingConfig
from personagpt.generate.kvcache import ReservedCache, compiled_step, eager_step
from personagpt.models.load import build_gpt2, load_model, load_tokenizer, resolve_model_name
from personagpt.models.precision import inference_autocast

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def original_turns(model, fmt, facts, user_turns, samplings, seed):
    """The original loop: ``generate`` on the full re-encoded history each turn."""
    torch.manual_seed(seed)
    prefix = fmt.persona_prefix(facts)
    history: list[int] = []
    latencies = []
    for text, sampling in zip(user_turns, samplings):
        start = time.perf_counter()
        history += fmt.utterance(text)
        ids = torch.tensor([prefix + history])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), **sampling.generate_kwargs(fmt))
        reply = out[0, ids.shape[1]:].tolist()
        history += reply + [fmt.eos_id]
        latencies.append(time.perf_counter() - start)
    return latencies


def our_turns(model, fmt, facts, user_turns, samplings, seed, compile=False):
    conversation = Conversation.with_persona(model, fmt, facts, sampling=samplings[0], seed=seed, compile=compile)
    latencies = []
    for text, sampling in zip(user_turns, samplings):
        start = time.perf_counter()
        conversation.add_turn(text)
        conversation.respond(sampling)
        latencies.append(time.perf_counter() - start)
    return latencies


@torch.inference_mode()
def step_times(model, steps: int = 40) -> dict[str, float]:
    """Milliseconds per single-token forward after a 250-token prefill, eager and compiled."""
    context = torch.randint(0, 1000, (1, 250))
    token = torch.tensor([[5]])
    caches = {"eager": ReservedCache, "compiled": lambda: StaticCache(config=model.config, max_cache_len=512)}
    forward = {"eager": eager_step(model), "compiled": compiled_step(model)}
    times = {}
    for name in caches:
        for _ in range(2):  # the first pass compiles / warms up; the second is kept
            cache = caches[name]()
            model(context, cache=cache, use_cache=True, logits_to_keep=1)
            start = time.perf_counter()
            for _ in range(steps):
                forward[name](token, cache)
            times[name] = (time.perf_counter() - start) / steps * 1000
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="conversations per side; the median is reported")
    parser.add_argument("--new-tokens", type=int, default=None,
                        help="tokens generated per bot turn (default: the gold reply's length)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=["no", "bf16"], default="no",
                        help="autocast for both sides (default: fp32, as the original ran)")
    parser.add_argument("--model", default=None,
                        help="a model to load instead (name, path, or 'bundled' for the default model)")
    parser.add_argument("--steps", action="store_true", help="also time single decoding steps, eager and compiled")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()

    if args.model:
        name = resolve_model_name(None if args.model == "bundled" else args.model)
        model, tokenizer = load_model(name, merge_adapter=True)
        label = args.model
    else:
        tokenizer = load_tokenizer(SHARED / "tokenizer" / "gpt2")
        model = build_gpt2(tokenizer, n_layer=6, n_embd=384, n_head=6, n_positions=1024)
        label = "GPT-2 6x384 (random init)"
    fmt = PromptFormat(tokenizer)
    dialogue = load_dialogues(SHARED / "personachat" / "valid_both_original_no_cands.txt")[0]
    user_turns = dialogue.turns[0::2][:8]
    lengths = [args.new_tokens or len(fmt.text(reply)) for reply in dialogue.turns[1::2][:8]]
    # every side generates exactly n tokens (eos banned before), so all do the same decoding work
    samplings = [SamplingConfig(max_new_tokens=n, min_new_tokens=n) for n in lengths]
    facts = dialogue.p2_facts

    sides = {
        "original": original_turns,
        "ours": our_turns,
        "ours, compiled": lambda *a: our_turns(*a, compile=True),
    }
    runs = {name: [] for name in sides}
    with inference_autocast(model, args.precision):
        warm_up = {}
        for name, side in sides.items():
            start = time.perf_counter()
            side(model, fmt, facts, user_turns, samplings, args.seed)
            warm_up[name] = time.perf_counter() - start
        for r in range(args.repeats):
            for name, side in sides.items():
                runs[name].append(side(model, fmt, facts, user_turns, samplings, args.seed + r))
    median = {k: [statistics.median(run[t] for run in v) * 1000 for t in range(len(user_turns))]
              for k, v in runs.items()}

    context = len(fmt.persona_prefix(facts)) + sum(len(fmt.utterance(t)) + n + 1 for t, n in zip(user_turns, lengths))
    print(f"model: {label}, precision: {args.precision}, torch threads: {torch.get_num_threads()}, "
          f"context at turn 8: {context} tokens, median of {args.repeats} conversations")
    print("warm-up conversation (s): " + ", ".join(f"{k} {v:.1f}" for k, v in warm_up.items()))
    print("| turn | new tokens | original (ms) | ours (ms) | speed-up | ours, compiled (ms) | speed-up |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for t, (o, n, c) in enumerate(zip(median["original"], median["ours"], median["ours, compiled"]), 1):
        print(f"| {t} | {lengths[t - 1]} | {o:.1f} | {n:.1f} | {o / n:.2f}x | {c:.1f} | {o / c:.2f}x |")
    o8 = median["original"][-1]
    for name in ("ours", "ours, compiled"):
        n8, n1 = median[name][-1], median[name][0]
        per_token = [m / n for m, n in zip(median[name], lengths)]
        print(f"{name}: turn-8 speed-up {o8 / n8:.2f}x (target >= 2x); turn 8 / turn 1: {n8 / n1:.2f} "
              f"(target <= 1.3); per generated token: {per_token[-1] / per_token[0]:.2f}")
    if args.steps:
        times = step_times(model)
        print("single decoding step at a 250-token context (ms): "
              + ", ".join(f"{k} {v:.2f}" for k, v in times.items()))


if __name__ == "__main__":
    main()
