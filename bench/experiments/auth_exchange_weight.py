"""How much a yes or no to a fact question should count: the exchange identifier's ``weight``, set on training
personas (never the validation personas ``auth eval`` reports on).

    python bench/experiments/auth_exchange_weight.py [--interviews 64] [--weights 0 0.5 1 2 3]

Plays ``--interviews`` self-play interviews of training personas (K = 20, 8 turns) with random goals and as many
with random fact questions (the options the planner weighs), then scores every transcript again with the exchange
identifier at each weight (0: the sentence identifier). Reported per weight: the true persona's mean
log-probability over turns 1-8 (the calibration criterion the sentence identifier's scale was set by) and Hits@1
after 4 and 8 turns. Results: bench/results/auth_exchange_weight.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from personagpt.auth.interview import SelfPlay, sample_sets, rescore
from personagpt.auth.identify import ExchangeIdentifier
from personagpt.auth.plan import RandomQuestionPolicy
from personagpt.auth.commands import training_personas
from personagpt.models.load import load_chat_model
from personagpt.models.hardware import describe_hardware
from personagpt.generate.sampling import SamplingConfig
from personagpt.control.selfplay import RandomPolicy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interviews", type=int, default=64)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0, 3.0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/auth_exchange_weight.json"))
    args = parser.parse_args()

    torch.set_num_threads(2)
    model, fmt = load_chat_model(None)
    model.eval()
    _, pool = training_personas(0, 200)
    sets = sample_sets(pool, args.interviews, 20, 5)
    env = SelfPlay(model, fmt, None, 8, SamplingConfig(max_new_tokens=32), 32)
    started = time.perf_counter()
    try:
        episodes = {"random goals": env.play(sets, RandomPolicy(seed=5), 5, guide="exchange"),
                    "random fact questions": env.play(sets, RandomQuestionPolicy(env.facts, seed=5), 5,
                                                      guide="exchange")}
    finally:
        env.close()
    played = time.perf_counter() - started
    rows = []
    for weight in args.weights:
        row = {"weight": weight}
        for name, played_episodes in episodes.items():
            rescore(played_episodes, "w", lambda c: ExchangeIdentifier(env.facts, c, weight=weight))
            logp = [float(torch.log_softmax(torch.tensor(s), 0)[e.truth]) for e in played_episodes
                    for s in e.scores["w"]]
            hits = {t: sum(e.ranks("w")[t - 1] == 0 for e in played_episodes) / len(played_episodes) for t in (4, 8)}
            row[name] = {"mean_logp": sum(logp) / len(logp), "hits1_at_4": hits[4], "hits1_at_8": hits[8]}
        row["mean_logp_both"] = sum(row[n]["mean_logp"] for n in episodes) / len(episodes)
        rows.append(row)
        print(json.dumps(row), flush=True)
    best = max(rows, key=lambda r: r["mean_logp_both"])
    result = {"cpu": describe_hardware(), "interviews": args.interviews, "play_seconds": round(played, 1),
              "rows": rows, "best_weight": best["weight"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print("| weight | mean log p (random goals) | Hits@1 t4 / t8 | mean log p (fact questions) | Hits@1 t4 / t8 |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        a, b = r["random goals"], r["random fact questions"]
        print(f"| {r['weight']} | {a['mean_logp']:.3f} | {100 * a['hits1_at_4']:.1f} / {100 * a['hits1_at_8']:.1f} | "
              f"{b['mean_logp']:.3f} | {100 * b['hits1_at_4']:.1f} / {100 * b['hits1_at_8']:.1f} |")
    print(f"best weight by mean log p over both: {best['weight']} (played in {played:.0f} s on {result['cpu']})")


if __name__ == "__main__":
    main()
