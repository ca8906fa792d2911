"""Self-training data: which generated turns are kept, resumable harvesting, the capped merge, the command."""

from __future__ import annotations

import fcntl
import json

import pytest
from typer.testing import CliRunner

from personagpt.cli import app
from personagpt.data.dialogues import ControlRecord, Dialogue, load_control_records
from personagpt.errors import SettingsError
from personagpt.generate.conversation import SamplingConfig
from personagpt.control.selftrain import harvest, merge_control_records, read_attempts, verdict

GOAL = "ask about pets."


class LongRepliesFulfilTheGoal:
    """A stand-in labeler: a reply of 2+ words fulfils ``GOAL``; one that mentions 'music' also a music goal."""

    def label(self, text, goals):
        found = {GOAL} if len(text.split()) >= 2 else set()
        return found | ({"talk about music."} if "music" in text else set())


def dialogues(n=6):
    return [Dialogue(turns=[f"hello {i} !", "hi , how are you ?", "good , and you ?", "fine ."],
                     p1_facts=["i like dogs."], p2_facts=[f"i am {i} years old."]) for i in range(n)]


def test_only_single_goal_new_replies_are_kept():
    assert verdict(GOAL, {GOAL}, "do you have pets ?", set()) == "kept"
    assert verdict(GOAL, {GOAL}, "Do  you have pets ?", {"do you have pets ?"}) == "duplicate"
    assert verdict(GOAL, set(), "hello .", set()) == "rejected"
    assert verdict(GOAL, {GOAL, "talk about music."}, "do your pets like music ?", set()) == "rejected"


def test_merge_fills_goals_up_to_the_cap_and_keeps_every_base_example():
    base = [ControlRecord("ask about pets.", [], f"pets {i} ?") for i in range(3)] + \
           [ControlRecord("talk about work.", [], f"work {i} .") for i in range(5)]
    extra = [ControlRecord("ask about pets.", [], f"new pets {i} ?") for i in range(4)] + \
            [ControlRecord("talk about work.", [], "more work .")]
    merged, counts = merge_control_records(base, extra, cap=5)
    assert counts == {"ask about pets.": {"base": 3, "added": 2}, "talk about work.": {"base": 5, "added": 0}}
    assert len(merged) == 10 and all(r in merged for r in base)


def test_harvest_logs_every_attempt_and_resumes(tiny_model, fmt, tmp_path):
    log = tmp_path / "attempts.jsonl"
    sampling = SamplingConfig(max_new_tokens=5)
    first = harvest(tiny_model, fmt, dialogues(), [GOAL], log, per_goal=1, candidates=2, sampling=sampling,
                    labeler=LongRepliesFulfilTheGoal(), progress=False)
    attempts = read_attempts(log)
    assert sum(first[GOAL].values()) == len(attempts) >= 1 and first[GOAL]["kept"] == 1
    assert attempts[-1].verdict == "kept" and attempts[-1].labels == [GOAL] and attempts[-1].history
    # a torn last line (a killed run) is skipped; a second run continues to more kept turns on new contexts
    with open(log, "a", encoding="utf-8") as f:
        f.write('{"key": "0:1:ask')
    second = harvest(tiny_model, fmt, dialogues(), [GOAL], log, per_goal=3, max_attempts=12, candidates=2,
                     sampling=sampling, labeler=LongRepliesFulfilTheGoal(), progress=False)
    keys = [a.key for a in read_attempts(log)]
    assert len(keys) == len(set(keys)) == sum(second[GOAL].values()) > len(attempts)
    assert second[GOAL]["kept"] <= 3
    kept = [a.response for a in read_attempts(log) if a.verdict == "kept"]
    assert len(kept) == len(set(kept))
    with open(log, "a") as other:  # another harvest holds the log
        fcntl.flock(other, fcntl.LOCK_EX)
        with pytest.raises(SettingsError, match="another harvest"):
            harvest(tiny_model, fmt, dialogues(), [GOAL], log, per_goal=9, labeler=LongRepliesFulfilTheGoal(),
                    progress=False)


def test_harvest_through_an_engine_runs_contexts_side_by_side(tiny_model, fmt, tmp_path):
    from personagpt.generate.engine import Engine

    log = tmp_path / "attempts.jsonl"
    engine = Engine(tiny_model, fmt, max_batch=16, max_queue=16, backend="torch")
    submitted = []
    submit_many = engine.submit_many
    engine.submit_many = lambda ids, count, *a, **k: submitted.append(count) or submit_many(ids, count, *a, **k)
    try:
        counts = harvest(tiny_model, fmt, dialogues(), [GOAL], log, per_goal=4, max_attempts=10, candidates=2,
                         sampling=SamplingConfig(max_new_tokens=5, goal_candidates=1),  # --candidates wins
                         labeler=LongRepliesFulfilTheGoal(), engine=engine, parallel=3, progress=False)
        assert submitted == [2] * sum(counts[GOAL].values())  # every attempt's two candidates went to the engine
    finally:
        engine.close()
    attempts = read_attempts(log)
    assert sum(counts[GOAL].values()) == len(attempts) and counts[GOAL]["kept"] <= 4
    keys = [a.key for a in attempts]
    assert len(keys) == len(set(keys))


def test_build_selftrain_data_cli(tiny_checkpoint, tmp_path):
    source = tmp_path / "d.jsonl"
    source.write_text("".join(json.dumps({"turns": d.turns, "p1_facts": d.p1_facts, "p2_facts": d.p2_facts}) + "\n"
                              for d in dialogues(3)))
    base = tmp_path / "ctrl.jsonl"
    base.write_text(json.dumps({"goal": GOAL, "history": ["hi"], "response": "do you have a dog ?"}) + "\n")
    out, log = tmp_path / "out.jsonl", tmp_path / "log.jsonl"
    args = ["build-selftrain-data", "--model", str(tiny_checkpoint), "--data", str(source), "--base", str(base),
            "--out", str(out), "--log", str(log), "--goal", "1", "--per-goal", "1", "--max-attempts", "2",
            "--candidates", "2", "--max-new-tokens", "4", "--seed", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "| ask about pets. | 2 |" in result.output
    assert len(read_attempts(log)) == 2
    records = load_control_records(out)
    assert records[0].response == "do you have a dog ?" and len(records) == 1 + sum(
        a.verdict == "kept" for a in read_attempts(log))
    for bad, message in ((["--goal", "11"], "no action 11"), (["--base", str(tmp_path / "none.jsonl")], "none.jsonl")):
        result = CliRunner().invoke(app, args + bad)
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
