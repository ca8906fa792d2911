"""The labelled consistency set: persona / question / reply cases, about half of them contradicting the persona.

``build``: for each of the first ``--dialogues`` validation dialogues, one of p2's facts that
:func:`personagpt.personas.facts.question` turns into a yes/no question (drawn with seed 0) is asked as p1's next turn
after the gold history up to a random point. The bundled model answers twice, sampling (top-k 10 / top-p 0.92):
in character with the true persona, and with that fact negated in its persona (which makes contradicting
answers of the model's own style). Written to ``--out`` without labels (a label field is added by hand).

The labels (``bench/data/consistency_cases.jsonl``, 2026-12-03) were then given by hand, reading each case
(persona fact, question, reply): ``contradiction`` when the reply denies the asked fact ("no", "i do not", also
when it goes on to half-affirm it: "no , i work in the insurance business") or asserts another count, name, job,
place or status than a fact; ``consistent`` otherwise (agreeing, evasive, or not about the fact). 300 cases, 147
contradictions; 52 of the 150 replies given with the true persona contradict it. They are the test set of the consistency scorer
(``bench/consistency_eval.py``), never used to tune it.

    python bench/consistency_cases.py build [--dialogues 150] [--out bench/data/consistency_unlabelled.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

from tqdm import tqdm

from personagpt.data.dialogues import load_dialogues
from personagpt.personas.facts import negate, question
from personagpt.generate.conversation import Conversation, SamplingConfig
from personagpt.models.load import load_chat_model

DATA = Path(os.environ.get("PERSONAGPT_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def build(args) -> None:
    model, fmt = load_chat_model(None)
    dialogues = load_dialogues(DATA / "personachat" / "valid_both_original_no_cands.txt")[: args.dialogues]
    rng = random.Random(0)
    sampling = SamplingConfig(max_new_tokens=32)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as out:
        for index, d in enumerate(tqdm(dialogues, desc="cases", unit="dialogue")):
            askable = [f for f in d.p2_facts if question(f) and negate(f)]
            if not askable:
                continue
            fact = rng.choice(askable)
            asked, expected = question(fact)
            cut = rng.randrange(0, min(len(d.turns), 6) // 2 + 1) * 2  # p1 speaks next
            turns = list(d.turns[:cut]) + [asked]
            for condition, persona in (("true", d.p2_facts),
                                       ("negated", [negate(f) if f == fact else f for f in d.p2_facts])):
                reply = Conversation.from_turns(model, fmt, turns, persona=persona, seed=index,
                                                sampling=sampling).respond()
                out.write(json.dumps({"dialogue": index, "persona": d.p2_facts, "fact": fact, "turns": turns,
                                      "question": asked, "expected": expected, "condition": condition,
                                      "reply": reply}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("--dialogues", type=int, default=150)
    b.add_argument("--out", type=Path, default=Path("bench/data/consistency_unlabelled.jsonl"))
    args = parser.parse_args()
    build(args)


if __name__ == "__main__":
    main()
