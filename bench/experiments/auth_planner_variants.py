"""Which interviewer to evaluate: variants of the question planner and their baselines, compared on training
personas (never the validation personas ``auth eval`` reports on), so that choosing one does not tune on the test.

    python bench/experiments/auth_planner_variants.py [--interviews 48] [--turns 4] [--variants random random-topic ...]

Every variant interviews the same training personas against the same 19 distractors (K = 20) and is judged by the
sentence identifier; interviews are kept in ``--out`` (a rerun resumes them). Printed: Hits@1 after each turn,
paired with random goals (95% bootstrap), and play time. Results: ``--out``/results.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from personagpt.auth.interview import SelfPlay, sample_sets
from personagpt.auth.report import report
from personagpt.auth.plan import TOPIC_QUESTIONS, Gated, Planner, RandomQuestionPolicy
from personagpt.auth.commands import evaluate, training_personas
from personagpt.models.load import load_chat_model
from personagpt.models.hardware import describe_hardware
from personagpt.generate.sampling import SamplingConfig
from personagpt.control.selfplay import RandomPolicy


def variants(env: SelfPlay, seed: int) -> dict:
    """name -> (policy, guide identifier)."""
    facts = env.facts
    return {
        "random": (RandomPolicy(seed=seed), None),
        "random-topic": (RandomQuestionPolicy(facts, questions=0, topics=len(TOPIC_QUESTIONS), seed=seed), "sentence"),
        "random-question": (RandomQuestionPolicy(facts, seed=seed), "exchange"),
        "planner-entropy-exchange": (Planner(facts), "exchange"),  # the first planner
        "planner-gated": (Gated(Planner(facts), seed=seed), "exchange"),
        # what `auth eval --policy planner` runs: yes and no weighed by what this partner's are worth
        "planner-gated-calibrated": (Gated(Planner(facts), seed=seed), "calibrated"),
        # the same, with random's own goal for the turn as one more option: it leaves random's interview only where
        # a question is expected to tell more
        "planner-or-random": (Gated(Planner(facts, baseline=RandomPolicy(seed=seed)), seed=seed), "calibrated"),
        "planner-truth-sentence": (Planner(facts, criterion="truth"), "sentence"),
        "planner-topic-truth": (Planner(facts, questions=2, topics=3, criterion="truth"), "sentence"),
        "planner-topic-entropy": (Planner(facts, questions=2, topics=3), "sentence"),
        "planner-topic-only": (Planner(facts, questions=0, topics=4, criterion="truth"), "sentence"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interviews", type=int, default=48)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--variants", nargs="+", default=["random", "random-topic", "planner-topic-truth"])
    parser.add_argument("--out", type=Path, default=Path("runs/auth/variants"))
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--partner-candidates", type=int, default=1, help="the partner answers best-of-N")
    args = parser.parse_args()

    torch.set_num_threads(2)
    model, fmt = load_chat_model(None)
    model.eval()
    _, pool = training_personas(0, 200)
    sets = sample_sets(pool, args.interviews, 20, args.seed)
    env = SelfPlay(model, fmt, None, args.turns, SamplingConfig(max_new_tokens=32), 32,
                   partner_candidates=args.partner_candidates)
    known = variants(env, args.seed)
    unknown = [v for v in args.variants if v not in known]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {list(known)}")
    try:
        saved = evaluate(env, sets, {v: known[v] for v in args.variants}, args.out, args.seed,
                         meta={"interviews": args.interviews, "turns": args.turns, "cpu": describe_hardware(),
                               "personas": "training (packaged list, calibration 200 held out)"})
    finally:
        env.close()
    counts = {"sentence": args.interviews, "exchange": args.interviews}
    print("\n".join(report(saved["results"], saved["paired_vs_random"], 20, counts)))
    print(json.dumps({v: r["played"] for v, r in saved["results"].items()}))
    print(f"CPU: {describe_hardware()}")


if __name__ == "__main__":
    main()
