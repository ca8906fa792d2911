"""Persona authentication, first parts: candidate sets, interviews scored turn by turn, the per-turn measure."""

import pytest
from typer.testing import CliRunner

from personagpt.auth.env import candidate_sets, interview
from personagpt.auth.measure import hits_by_turn, turns_to, wilson
from personagpt.auth.policies import NoGoalPolicy, baseline_policies
from personagpt.cli import app
from personagpt.errors import SettingsError
from personagpt.generation import SamplingConfig
from personagpt.scoring import rank_personas

POOL = [["i like dogs."], ["i love jazz."], ["i have three kids."], ["i hate snow."], ["i am a pilot."]]


def test_candidate_sets_hold_the_truth_once_and_distractors_from_the_pool():
    sets = candidate_sets(POOL[:2], POOL, k=4, seed=1)
    for (candidates, truth), persona in zip(sets, POOL[:2]):
        assert candidates[truth] == persona and candidates.count(persona) == 1 and len(candidates) == 4
        assert all(c in POOL for c in candidates)
    with pytest.raises(SettingsError, match="distractors"):
        candidate_sets(POOL[:1], POOL, k=6)


def test_an_interview_ranks_the_candidates_after_every_turn(tiny_model, fmt):
    (candidates, truth), = candidate_sets([POOL[0]], POOL, k=5, seed=0)
    episode = interview(tiny_model, fmt, candidates, truth, NoGoalPolicy(), turns=3,
                        sampling=SamplingConfig(max_new_tokens=5), seed=0)
    assert len(episode.ranks) == len(episode.probabilities) == 3 and all(0 <= r < 5 for r in episode.ranks)
    assert episode.transcript.actions == ["(no goal)", None] * 3
    # the per-turn scores are the identifier's on the whole transcript
    full = rank_personas(tiny_model, fmt, candidates, episode.transcript.turns, speaker=2)
    assert full.totals().tolist() == pytest.approx(episode.log_likelihoods[-1], abs=1e-3)
    steered = interview(tiny_model, fmt, candidates, truth, baseline_policies()["round-robin"], turns=2,
                        sampling=SamplingConfig(max_new_tokens=5), seed=0)
    assert steered.transcript.actions[::2] == ["ask about kids.", "ask about pets."]


def test_hits_by_turn_and_intervals():
    class E:
        def __init__(self, ranks):
            self.ranks = ranks

    rows = hits_by_turn([E([0, 0]), E([3, 0]), E([1, 2]), E([2, 0])])
    assert [r["hits1"] for r in rows] == [0.25, 0.75]
    assert rows[0]["low"] < 0.25 < rows[0]["high"] and turns_to(rows) == 2
    assert wilson(0, 10)[0] == 0.0 and 0 < wilson(0, 10)[1] < 0.35


def test_auth_eval_command(tmp_path):
    result = CliRunner().invoke(app, ["auth", "eval", "--model", "random:2x64", "--conversations", "3", "--turns",
                                      "2", "-k", "4", "--max-new-tokens", "4", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "| round-robin |" in result.output and (tmp_path / "hits_by_turn.png").is_file()
    bad = CliRunner().invoke(app, ["auth", "eval", "--model", "random:2x64", "--policy", "dqn"])
    assert bad.exit_code == 2 and "unknown policy" in bad.output
    too_big = CliRunner().invoke(app, ["auth", "eval", "--model", "random:2x64", "--conversations", "5000"])
    assert too_big.exit_code == 2 and "personas" in too_big.output
