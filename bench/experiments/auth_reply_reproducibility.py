"""Do two plays of the same interviews say the same words? A paired comparison of two interviewers (common random
numbers: the same seeds, the same goal draws) measures only what the interviewers change if a reply is a function
of its seed and its prompt. On the engine it may not be: decoding steps are batched with whatever other interviews
are running, prompts may find their persona in the prefix cache or not, and the arithmetic's rounding follows.

    python bench/experiments/auth_reply_reproducibility.py [--interviews 16] [--turns 2] [--fast-path int8|fp32]

Plays random goals on training personas twice, 32 interviews side by side and then 3 (other batches, a warm
prefix cache), and prints how many questions and answers are the same word for word, turn by turn.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from personagpt.auth.interview import SelfPlay, sample_sets
from personagpt.auth.commands import training_personas
from personagpt.models.load import load_chat_model
from personagpt.models.hardware import describe_hardware
from personagpt.generate.sampling import SamplingConfig
from personagpt.control.selfplay import RandomPolicy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interviews", type=int, default=16)
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--fast-path", choices=("int8", "fp32"), default=None,
                        help="the decoding path (default: what this CPU gets)")
    parser.add_argument("--partner-candidates", type=int, default=4)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    if args.fast_path:
        os.environ["PERSONAGPT_FAST_PATH"] = args.fast_path

    torch.set_num_threads(2)
    model, fmt = load_chat_model(None)
    model.eval()
    _, pool = training_personas(0, 200)
    sets = sample_sets(pool, args.interviews, 20, args.seed)
    plays, seconds = [], []
    for workers in (32, 3):
        env = SelfPlay(model, fmt, None, args.turns, SamplingConfig(max_new_tokens=32), workers,
                       partner_candidates=args.partner_candidates)
        start = time.perf_counter()
        try:
            plays.append(env.play(sets, RandomPolicy(seed=args.seed), args.seed))
        finally:
            env.close()
        seconds.append(round(time.perf_counter() - start, 1))
    first, second = ([e.transcript.turns for e in play] for play in plays)
    same = [sum(a[i] == b[i] for a, b in zip(first, second)) for i in range(2 * args.turns)]
    print(json.dumps({"fast_path": os.environ.get("PERSONAGPT_FAST_PATH", "auto"), "interviews": args.interviews,
                      "same_question_by_turn": same[0::2], "same_answer_by_turn": same[1::2],
                      "seconds": seconds, "cpu": describe_hardware()}))


if __name__ == "__main__":
    main()
