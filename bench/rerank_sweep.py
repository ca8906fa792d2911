"""Best-of-N sweep on a fixed validation subset (issue 17's measure): reply quality and control per N.

Replies: for each of the first ``--dialogues`` validation dialogues, one p2 turn (drawn with seed 0, the same for
every N) is generated from the gold history and p2's persona by the bundled model (sampling, top-k 10 / top-p 0.92,
at most 32 tokens, conversation seed = dialogue index). Per N: ConvAI2 F1 against the gold turn, distinct-1/2 over
all replies, the share of replies repeating a word 4-gram of an earlier p2 turn of the dialogue, and Hits@1 of the
generated reply (its true persona against 19 other validation personas, ranked by the reply's likelihood after
each persona and the gold history; for the first ``--hits-dialogues`` replies only).

Control: ``--control-contexts`` validation contexts x 11 goals (and the unsteered base), sampled as above with at
most 40 tokens, best-of-N, judged by the goal labeler (the one that also scores candidates: a reranker that
asks the labeler first makes success a question of whether any of N samples fulfils the goal).

Persona questions (the probe set): for each of the first ``--dialogues`` validation dialogues, one of p2's facts
that :func:`personagpt.personas.facts.question` turns into a yes/no question (seed 1) is asked as p1's next turn after the
gold history up to a random point, and the bot answers in character. Judged by the reply's opening words
(:func:`personagpt.personas.facts.answer_polarity`) against the answer the fact implies: recall is the share answering as
the fact implies, contradiction the share answering against it (the rest answer neither way). The same words
decide the reranker's denial check, so best-of-N is judged on what it optimises: ``bench/consistency_eval.py``
gives the rule's agreement with hand labels (precision 89.5%, recall 81.0% for contradictions).

A setting is ``N`` or ``N:C``: N candidates, chosen after C tokens (0 or none: among whole replies).
Results go to ``--out`` after every setting; a rerun skips the settings already there.

    python bench/rerank_sweep.py [--dialogues 300] [--settings 1 4:8] [--control-contexts 20] [--hits-dialogues 100]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from personagpt.control.goals import GoalLabeler
from personagpt.eval.evaluate import control_success
from personagpt.data.dialogues import distinct_personas, load_dialogues
from personagpt.eval.evaluate import distinct_n, persona_probes, word_f1
from personagpt.personas.facts import answer_polarity
from personagpt.generate.conversation import Conversation, SamplingConfig
from personagpt.models.load import load_chat_model
from personagpt.models.hardware import describe_hardware
from personagpt.generate.best_of_n import repetition
from personagpt.scoring import PersonaRanker

DATA = Path(os.environ.get("PERSONAGPT_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def reply_hits(model, fmt, persona, others, history, reply) -> bool:
    """Is the true persona the most likely author of ``reply`` (strictly, ties are misses)?"""
    ranker = PersonaRanker(model, fmt, [persona] + others, speaker=2)
    scores = ranker.add_turns(list(history) + [reply])[-1]
    return bool((scores[0] > scores[1:]).all())


def persona_questions(model, fmt, dialogues, sampling: SamplingConfig) -> dict:
    """The probe set: a yes/no question about one of the bot's facts, answered in character."""
    answers = {"recall": 0, "contradiction": 0, "neither": 0}
    samples = []
    for probe in tqdm(persona_probes(dialogues, len(dialogues)), desc="persona questions", unit="question"):
        reply = Conversation.from_turns(model, fmt, probe.turns, persona=probe.persona, seed=probe.index,
                                        sampling=sampling).respond()
        polarity = answer_polarity(reply)
        answers["neither" if polarity is None else "recall" if polarity == probe.expected else "contradiction"] += 1
        if len(samples) < 8:
            samples.append({"fact": probe.fact, "question": probe.turns[-1], "reply": reply})
    total = sum(answers.values())
    return {"questions": total, **{k: 100 * v / total for k, v in answers.items()}, "samples": samples}


def replies_at(model, fmt, dialogues, pool, sampling: SamplingConfig, hits_dialogues: int) -> dict:
    rng = random.Random(0)
    picks = [(d, rng.randrange(1, len(d.turns), 2)) for d in dialogues]
    n = sampling.num_candidates
    replies, f1, repeats, hits, seconds = [], [], 0, 0, 0.0
    for i, (d, t) in enumerate(tqdm(picks, desc=f"replies N={n}", unit="reply")):
        started = time.perf_counter()
        reply = Conversation.from_turns(model, fmt, d.turns[:t], persona=d.p2_facts, seed=i, sampling=sampling).respond()
        seconds += time.perf_counter() - started
        replies.append(reply)
        f1.append(word_f1(reply, d.turns[t]))
        repeats += repetition(reply, d.turns[1:t:2]) > 0
        if i < hits_dialogues:
            others = [list(p) for p in random.Random(i).sample([p for p in pool if list(p) != d.p2_facts], 19)]
            hits += reply_hits(model, fmt, d.p2_facts, others, d.turns[:t], reply)
    return {"replies": len(replies), "f1": 100 * sum(f1) / len(f1), "distinct_1": distinct_n(replies, 1),
            "distinct_2": distinct_n(replies, 2), "repeat_share": 100 * repeats / len(replies),
            "hits1_reply": 100 * hits / min(hits_dialogues, len(replies)) if hits_dialogues else None, "seconds_per_reply": seconds / len(replies),
            "samples": [{"gold": d.turns[t], "generated": r} for (d, t), r in list(zip(picks, replies))[:5]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogues", type=int, default=300)
    parser.add_argument("--settings", nargs="+", default=["1", "4:8"])
    parser.add_argument("--control-contexts", type=int, default=20)
    parser.add_argument("--hits-dialogues", type=int, default=100, help="Rank personas for the first N replies only "
                        "(20 rows over the whole history per reply: the dearest part)")
    parser.add_argument("--greedy", action="store_true", help="Also a greedy row (N = 1, no sampling: how the "
                        "model card's evaluation decodes), on the same contexts")
    parser.add_argument("--out", type=Path, default=Path("bench/results/rerank_sweep.json"))
    args = parser.parse_args()
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    model, fmt = load_chat_model(None)
    model.eval()
    split = load_dialogues(DATA / "personachat" / "valid_both_original_no_cands.txt")
    pool = distinct_personas(f for d in split for f in (d.p1_facts, d.p2_facts))
    dialogues = split[: args.dialogues]
    labeler = GoalLabeler()
    print(f"torch threads: {torch.get_num_threads()}", flush=True)
    for setting in args.settings + (["greedy"] if args.greedy else []):
        if setting in results:
            continue
        greedy = setting == "greedy"
        n, _, commit = ("1" if greedy else setting).partition(":")
        sampling = SamplingConfig(max_new_tokens=32, num_candidates=int(n), commit_tokens=int(commit or 0),
                                  do_sample=not greedy)
        row = replies_at(model, fmt, dialogues, pool, sampling, args.hits_dialogues)
        row["persona_questions"] = persona_questions(model, fmt, dialogues, sampling)
        control = control_success(model, fmt, split, labeler, contexts=args.control_contexts,
                                  sampling=replace(sampling, max_new_tokens=40), seed=0, candidates=int(n))
        row["control"] = {g: round(100 * v["success"], 1) for g, v in control.items()}
        row["control_base"] = round(100 * control["overall"]["base_rate"], 1)
        row["cpu"] = describe_hardware()
        results[setting] = row
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
        print(f"{setting}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float)), flush=True)
        print("  persona questions: " + json.dumps({k: v for k, v in row["persona_questions"].items()
                                                    if k != "samples"}), flush=True)
        print("  control per goal: " + json.dumps(row["control"]), flush=True)

    print(markdown(results))


def _name(setting: str) -> str:
    if setting == "greedy":
        return "greedy"
    n, _, commit = setting.partition(":")
    return f"N = {n}" + (f", chosen after {commit} tokens" if commit and commit != "0" else "")


def markdown(results: dict) -> str:
    """One row per N (and greedy): reply quality, then control success per goal."""
    lines = ["| decoding | F1 | distinct-1 | distinct-2 | repeats an earlier 4-gram (%) | Hits@1 of reply (%) | "
             "persona questions: recall / contradicting (%) | control (%) | weakest goal (%) | s / reply |",
             "|---|" + "---:|" * 9]
    for n, r in results.items():
        goals = {g: v for g, v in r["control"].items() if g != "overall"}
        weakest = min(goals, key=goals.get)
        probe = r.get("persona_questions")
        asked = f"{probe['recall']:.1f} / {probe['contradiction']:.1f}" if probe else "-"
        lines.append(f"| {_name(n)} | {r['f1']:.2f} | {r['distinct_1']:.3f} | "
                     f"{r['distinct_2']:.3f} | {r['repeat_share']:.1f} | "
                     f"{'-' if r['hits1_reply'] is None else format(r['hits1_reply'], '.1f')} | {asked} | "
                     f"{r['control']['overall']:.1f} | {goals[weakest]:.0f} ({weakest.rstrip('.')}) | "
                     f"{r['seconds_per_reply']:.2f} |")
    goal_names = [g for g in next(iter(results.values()))["control"] if g != "overall"]
    lines += ["", "| goal | " + " | ".join(_name(n) for n in results) + " |",
              "|---|" + "---:|" * len(results)]
    for g in goal_names:
        lines.append(f"| {g} | " + " | ".join(f"{r['control'][g]:.0f}" for r in results.values()) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
