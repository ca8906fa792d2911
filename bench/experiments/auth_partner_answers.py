"""How faithfully the partner answers a yes/no question about a fact, with one sample or best-of-N.

    python bench/experiments/auth_partner_answers.py [--personas 60] [--candidates 1 4]

Training personas (never the validation personas ``auth eval`` reports on). Each persona is asked, on a fresh
conversation, the yes/no question (:func:`personagpt.personas.facts.question`) of each of its own facts ("held") and of as
many facts of other personas ("not held"). Per setting: how often the answer opens with yes or no, how often that
is the answer the asked fact implies (what an identifier counts as support), the log-likelihood ratio it carries
(held : not held), and the time. Interviews in ``auth eval`` answer the way ``--partner-candidates`` says.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from personagpt.auth.commands import training_personas
from personagpt.generate.engine import Engine
from personagpt.personas.facts import answer_polarity, question
from personagpt.generate.conversation import Conversation
from personagpt.models.load import load_chat_model
from personagpt.models.hardware import describe_hardware
from personagpt.models.precision import serving_model
from personagpt.generate.sampling import DEFAULT_COMMIT_TOKENS, SamplingConfig


def asked(personas: list[list[str]], seed: int) -> list[tuple[list[str], str, bool, bool]]:
    """(persona, question, the answer the asked fact implies, whether the persona holds it)."""
    rng = random.Random(seed)
    out = []
    for persona in personas:
        own = [q for q in map(question, persona) if q]
        others = [q for p in rng.sample(personas, 8) if p != persona for q in map(question, p) if q]
        out += [(persona, q, yes, True) for q, yes in own]
        out += [(persona, q, yes, False) for q, yes in rng.sample(others, min(len(own), len(others)))]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--personas", type=int, default=60)
    parser.add_argument("--candidates", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="write the table's figures here as JSON")
    args = parser.parse_args()

    torch.set_num_threads(2)
    model, fmt = load_chat_model(None)
    model.eval()
    _, pool = training_personas(0, 200)
    cases = asked(random.Random(args.seed).sample(pool, args.personas), args.seed)
    engine = Engine(serving_model(model), fmt, max_batch=32, max_queue=8192, prefix_cache_tokens=65536)
    results = {"hardware": describe_hardware(), "questions": len(cases), "settings": {}}
    print(f"{len(cases)} questions to {args.personas} training personas; {describe_hardware()}")
    print("| partner | yes/no answers | the implied one, held | ... not held | LLR of the implied answer | "
          "of the opposite | s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for n in args.candidates:
        sampling = SamplingConfig(max_new_tokens=32, num_candidates=n, commit_tokens=DEFAULT_COMMIT_TOKENS)

        def answer(i: int) -> str:
            persona, text, _, _ = cases[i]
            bot = Conversation.with_persona(model, fmt, persona, sampling=sampling, engine=engine, seed=args.seed + i)
            bot.add_turn(text)
            return bot.respond()

        start = time.perf_counter()
        with ThreadPoolExecutor(32) as threads:
            replies = list(threads.map(answer, range(len(cases))))
        seconds = time.perf_counter() - start
        implied = {True: [], False: []}
        for (_, _, yes, held), reply in zip(cases, replies):
            polarity = answer_polarity(reply)
            if polarity is not None:
                implied[held].append(polarity == yes)
        rate = {k: sum(v) / max(1, len(v)) for k, v in implied.items()}
        answered = (len(implied[True]) + len(implied[False])) / len(cases)
        llr = math.log(rate[True] / rate[False]) if rate[False] else math.inf
        opposite = math.log((1 - rate[True]) / (1 - rate[False])) if rate[True] < 1 else -math.inf
        print(f"| best-of-{n} | {100 * answered:.0f}% | {100 * rate[True]:.0f}% | {100 * rate[False]:.0f}% | "
              f"{llr:+.2f} | {opposite:+.2f} | {seconds:.0f} |")
        results["settings"][f"best-of-{n}"] = {"yes_no": answered, "implied_held": rate[True],
                                              "implied_not_held": rate[False], "llr_implied": llr,
                                              "llr_opposite": opposite, "seconds": seconds,
                                              "examples": [[c[1], r] for c, r in zip(cases[:6], replies[:6])]}
    engine.close()
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
