"""Per-turn latency of an 8-turn scripted conversation: our KV-cached session against the original approach.

The original PersonaGPT re-encodes ``persona + whole history`` and calls ``model.generate`` from scratch every
turn. Both sides use the same model (a random 6-layer / 384-wide GPT-2 on the GPT-2 vocabulary), the same
seed and the same scripted user turns (a real validation dialogue), and generate exactly the same number of
tokens per turn, so the difference is only how the context and the decoding steps are handled.

By default each bot turn generates exactly as many tokens as the gold reply at that point of the dialogue (what
a trained model's replies look like); ``--new-tokens N`` fixes every reply at N tokens instead.

``--precision bf16`` runs both sides under bf16 autocast (it makes single-token decoding slower on a CPU).

    python bench/generation.py [--repeats 5] [--new-tokens N] [--precision no|bf16]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import transformers

from personagpt.data import load_dialogues
from personagpt.format import PromptFormat
from personagpt.generation import Conversation, SamplingConfig
from personagpt.models import build_gpt2, inference_autocast, load_tokenizer

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


def our_turns(model, fmt, facts, user_turns, samplings, seed):
    conversation = Conversation.with_persona(model, fmt, facts, sampling=samplings[0], seed=seed)
    latencies = []
    for text, sampling in zip(user_turns, samplings):
        start = time.perf_counter()
        conversation.add_turn(text)
        conversation.respond(sampling)
        latencies.append(time.perf_counter() - start)
    return latencies


class FixedLength(SamplingConfig):
    """Generate exactly max_new_tokens on both sides, so both do the same decoding work."""

    def generate_kwargs(self, fmt):
        return super().generate_kwargs(fmt) | {"min_new_tokens": self.max_new_tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="conversations per side; the median is reported")
    parser.add_argument("--new-tokens", type=int, default=None,
                        help="tokens generated per bot turn (default: the gold reply's length)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=["no", "bf16"], default="no",
                        help="autocast for both sides (default: fp32, as the original ran)")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()

    tokenizer = load_tokenizer(SHARED / "tokenizer" / "gpt2")
    fmt = PromptFormat(tokenizer)
    model = build_gpt2(tokenizer, n_layer=6, n_embd=384, n_head=6, n_positions=1024)
    dialogue = load_dialogues(SHARED / "personachat" / "valid_both_original_no_cands.txt")[0]
    user_turns = dialogue.turns[0::2][:8]
    lengths = [args.new_tokens or len(fmt.text(reply)) for reply in dialogue.turns[1::2][:8]]
    samplings = [FixedLength(max_new_tokens=n) for n in lengths]
    facts = dialogue.p2_facts

    runs = {"original": [], "ours": []}
    with inference_autocast(model, args.precision):
        original_turns(model, fmt, facts, user_turns[:2], samplings, args.seed)  # warm-up
        for r in range(args.repeats):
            runs["original"].append(original_turns(model, fmt, facts, user_turns, samplings, args.seed + r))
            runs["ours"].append(our_turns(model, fmt, facts, user_turns, samplings, args.seed + r))
    median = {k: [statistics.median(run[t] for run in v) * 1000 for t in range(len(user_turns))]
              for k, v in runs.items()}

    context = len(fmt.persona_prefix(facts)) + sum(len(fmt.utterance(t)) + n + 1 for t, n in zip(user_turns, lengths))
    print(f"model: GPT-2 6x384 (random init), precision: {args.precision}, torch threads: {torch.get_num_threads()}, "
          f"context at turn 8: {context} tokens, median of {args.repeats} conversations")
    print("| turn | new tokens | original (ms) | ours (ms) | speed-up |")
    print("|---:|---:|---:|---:|---:|")
    for t, (o, n) in enumerate(zip(median["original"], median["ours"]), 1):
        print(f"| {t} | {lengths[t - 1]} | {o:.1f} | {n:.1f} | {o / n:.2f}x |")
    o8, n8, n1 = median["original"][-1], median["ours"][-1], median["ours"][0]
    per_token = [m / n for m, n in zip(median["ours"], lengths)]
    print(f"\nturn-8 speed-up: {o8 / n8:.2f}x (target >= 2x); our turn 8 / our turn 1: {n8 / n1:.2f} "
          f"(target <= 1.3); per generated token: {per_token[-1] / per_token[0]:.2f}")


if __name__ == "__main__":
    main()
