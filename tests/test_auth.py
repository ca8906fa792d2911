"""Persona authentication: candidate sets, identifiers, the interview environment, DQN on a scripted environment,
verification measures, and the auth commands (tiny random models, the real shared data)."""

import json

import pytest
import torch
from typer.testing import CliRunner

from personagpt.auth.interview import Episode, View, candidate_sets, interview, rank_of, rescore
from personagpt.auth.identify import (EmbeddingIdentifier, FactEmbeddings, IdentifierHead, PooledEncoder,
                                      SentenceIdentifier)
from personagpt.auth.learn import (DQNConfig, TurnEmbeddings, identification_hits, refit_policy,
                                   train_identifier_head, train_policy)
from personagpt.auth.report import claims, error_rates, hits_by_turn, paired_difference, paired_with, roc_auc, threshold_for, turns_to, wilson
from personagpt.auth.policies import LearnedPolicy, LookaheadPolicy, NoGoalPolicy, baseline_policies
from personagpt.cli import app
from personagpt.data.dialogues import default_data_dir, load_dialogues
from personagpt.errors import SettingsError
from personagpt.format import DEFAULT_ACTIONS
from personagpt.generate.conversation import SamplingConfig
from personagpt.scoring import rank_personas
from personagpt.control.selfplay import Transcript

POOL = [["i like dogs."], ["i love jazz."], ["i have three kids."], ["i hate snow."], ["i am a pilot."]]
SHORT = SamplingConfig(max_new_tokens=5)


def test_candidate_sets_hold_the_truth_once_and_distractors_from_the_pool():
    sets = candidate_sets(POOL[:2], POOL, k=4, seed=1)
    for (candidates, truth), persona in zip(sets, POOL[:2]):
        assert candidates[truth] == persona and candidates.count(persona) == 1 and len(candidates) == 4
        assert all(c in POOL for c in candidates)
    with pytest.raises(SettingsError, match="distractors"):
        candidate_sets(POOL[:1], POOL, k=6)


def test_an_interview_ranks_the_candidates_after_every_turn(tiny_model, fmt):
    (candidates, truth), = candidate_sets([POOL[0]], POOL, k=5, seed=0)
    episode = interview(tiny_model, fmt, candidates, truth, NoGoalPolicy(), turns=3, sampling=SHORT, seed=0)
    assert len(episode.ranks("likelihood")) == 3 and all(0 <= r < 5 for r in episode.ranks("likelihood"))
    assert episode.transcript.actions == ["(no goal)", None] * 3
    # the incremental per-turn scores are the identifier's on the whole transcript, and rescoring repeats them
    full = rank_personas(tiny_model, fmt, candidates, episode.transcript.turns, speaker=2)
    assert full.totals().tolist() == pytest.approx(episode.scores["likelihood"][-1], abs=1e-3)
    again = Episode(episode.candidates, truth, episode.transcript)
    from personagpt.auth.interview import likelihood_identifiers
    rescore([again], "likelihood", likelihood_identifiers(tiny_model, fmt)["likelihood"])
    assert torch.allclose(torch.tensor(again.scores["likelihood"]), torch.tensor(episode.scores["likelihood"]), atol=1e-3)
    steered = interview(tiny_model, fmt, candidates, truth, baseline_policies()["round-robin"], turns=2,
                        sampling=SHORT, seed=0)
    assert steered.transcript.actions[::2] == ["ask about kids.", "ask about pets."]


def test_ranks_count_ties_against_the_truth():
    assert rank_of([1.0, 3.0, 2.0], 1) == 0 and rank_of([1.0, 3.0, 3.0], 1) == 1 and rank_of([5.0, 3.0], 1) == 1


def _head_for(model, fmt, dialogues=60, steps=30):
    encoder = PooledEncoder(model, fmt)
    data = TurnEmbeddings.encode(encoder, load_dialogues(
        default_data_dir() / "personachat" / "train_self_partial_no_cands.txt")[:dialogues])
    return encoder, data, train_identifier_head(data, steps=steps, batch_size=32)


def test_embedding_identifier_learns_and_scores_incrementally(tiny_model, fmt, tmp_path):
    encoder, data, head = _head_for(tiny_model, fmt)
    # on the dialogues it was trained on, the head must beat chance (1 in 5) clearly: a real fit, not a stub
    assert identification_hits(head, data, k=5, turns=4) > 0.4
    identifier = EmbeddingIdentifier(encoder, head, POOL)
    after_one = identifier.add_exchange("what do you like?", "i like dogs a lot.")
    preview, _ = identifier.preview("i love jazz too.")
    after_two = identifier.add_exchange("anything else?", "i love jazz too.")
    assert preview.tolist() == pytest.approx(after_two.tolist(), abs=1e-5) and after_one.shape == (5,)
    both = encoder.turns(["i like dogs a lot.", "i love jazz too."]).mean(0, keepdim=True)
    direct = head(both, encoder.personas(POOL))[0]
    assert direct.tolist() == pytest.approx(after_two.tolist(), abs=1e-4)
    restored = IdentifierHead.load(head.save(tmp_path / "head.pt"))
    assert torch.allclose(restored(both, encoder.personas(POOL)), direct.unsqueeze(0), atol=1e-5)


def test_sentence_identifier_finds_who_states_a_fact_and_accumulates():
    identifier = SentenceIdentifier(FactEmbeddings(), POOL)
    first = identifier.add_exchange("hi !", "hello ! i fly planes for a living .")
    pilot, kids = POOL.index(["i am a pilot."]), POOL.index(["i have three kids."])
    assert int(first.argmax()) == pilot
    preview, gain = identifier.preview("my three children keep me busy .")
    assert identifier.total.tolist() == pytest.approx((first / identifier.scale).tolist())  # preview commits nothing
    committed = identifier.add_exchange("any kids ?", "my three children keep me busy .")
    assert preview.tolist() == pytest.approx(committed.tolist(), abs=1e-5)
    assert committed.tolist() == pytest.approx((first + identifier.scale * gain).tolist(), abs=1e-4)
    assert set(torch.topk(committed, 2).indices.tolist()) == {pilot, kids}


def test_sentence_identifier_beats_chance_on_gold_dialogues():
    """Validation dialogues, 20 candidates: after 4 of the persona owner's turns the truth ranks first far more
    often than chance (1 in 20). On 300 dialogues it is 79% (README); 40 keep the test quick."""
    from personagpt.data.dialogues import distinct_personas

    split = default_data_dir() / "personachat" / "valid_both_original_no_cands.txt"
    dialogues = [d for d in load_dialogues(split) if d.p2_facts][:40]
    pool = distinct_personas(d.p2_facts for d in load_dialogues(split))
    facts, hits = FactEmbeddings(), 0
    for d, (candidates, truth) in zip(dialogues, candidate_sets([d.p2_facts for d in dialogues], pool, 20)):
        identifier = SentenceIdentifier(facts, candidates)
        for answer in d.turns[1::2][:4]:
            scores = identifier.add_exchange("", answer)
        hits += rank_of(scores, truth) == 0
    assert hits / len(dialogues) > 0.5


def test_lookahead_keeps_the_previewed_exchange(tiny_model, fmt):
    encoder, _, head = _head_for(tiny_model, fmt, dialogues=30, steps=5)
    (candidates, truth), = candidate_sets([POOL[0]], POOL, k=5, seed=0)
    identifiers = {"embedding": lambda c: EmbeddingIdentifier(encoder, head, c)}
    episode = interview(tiny_model, fmt, candidates, truth, LookaheadPolicy(DEFAULT_ACTIONS[:3]), turns=2,
                        sampling=SHORT, seed=0, identifiers=identifiers)
    assert all(a in DEFAULT_ACTIONS[:3] for a in episode.goals) and len(episode.scores["embedding"]) == 2


class RevealsOnPets:
    """A scripted partner: its answers tell the truth apart only when asked about pets (the first time)."""

    actions = DEFAULT_ACTIONS

    def collect(self, policy, count, round_index):
        episodes = []
        for i in range(count):
            g = torch.Generator().manual_seed(1000 * round_index + i)
            truth, scores, goals = i % 5, torch.zeros(5), []
            episode = Episode([["p"]] * 5, truth, Transcript([]), {"scripted": []})
            for turn in range(4):
                goal = policy.choose(View(turn, scores, list(goals)))
                noise = 0.1 * torch.randn(5, generator=g)
                scores = scores + noise
                if goal == "ask about pets." and goal not in goals:
                    scores[truth] += 3.0
                goals.append(goal)
                episode.transcript.turns += ["q", "a"]
                episode.transcript.actions += [goal, None]
                episode.scores["scripted"].append(scores.tolist())
            episodes.append(episode)
        return episodes


def test_dqn_learns_the_revealing_question_and_resumes(tmp_path):
    env = RevealsOnPets()
    config = DQNConfig(rounds=12, episodes_per_round=20, updates_per_round=60, seed=0)
    network = train_policy(env.collect, tmp_path, "scripted", config)
    greedy = LearnedPolicy(network)
    assert greedy.choose(View(0, torch.zeros(5), [])) == "ask about pets."
    learned = env.collect(greedy, 30, 99)
    random_ = env.collect(LearnedPolicy(network, epsilon=1.0, seed=1), 30, 99)
    hits = [sum(e.ranks("scripted")[1] == 0 for e in eps) for eps in (learned, random_)]
    assert hits[0] > hits[1] + 10  # identified after two turns far more often than asking at random
    log = json.loads((tmp_path / "log.json").read_text())
    assert len(log) == 12 and log[-1]["mean_return"] > log[0]["mean_return"]
    # a finished run resumes as finished; a longer one continues from the checkpoint (round 13 only)
    seen = []
    train_policy(lambda p, n, r: (seen.append(r), env.collect(p, n, r))[1], tmp_path, "scripted",
                 DQNConfig(rounds=13, episodes_per_round=5, updates_per_round=5, seed=0))
    assert seen == [12]
    # refitted on that run's replay buffer alone, with no discount: the same revealing question first
    refitted, losses = refit_policy(tmp_path / "checkpoint.pt", DQNConfig(gamma=0.0, seed=1), 600)
    assert refitted.guide == "scripted" and len(losses) == 600
    assert LearnedPolicy(refitted).choose(View(0, torch.zeros(5), [])) == "ask about pets."


def test_policy_state_sees_which_topics_split_the_likely_candidates():
    from personagpt.auth.policies import FEATURES, state_features, topic_coverage

    candidates = [["i have two dogs.", "i work as a nurse."], ["i love jazz."], ["i hate snow."]]
    coverage = topic_coverage(torch.tensor([0.5, 0.25, 0.25]), candidates)
    assert coverage[DEFAULT_ACTIONS.index("ask about pets.")] == 0.5
    assert coverage[DEFAULT_ACTIONS.index("talk about music.")] == 0.25
    assert coverage[DEFAULT_ACTIONS.index("talk about work.")] == 0.5
    assert coverage[DEFAULT_ACTIONS.index("talk about politics.")] == 0.0
    state = state_features(torch.zeros(3), 1, ["ask about pets."], candidates=candidates)
    assert state.shape == (FEATURES,) and state[-len(DEFAULT_ACTIONS):].tolist() == pytest.approx(
        topic_coverage(torch.full((3,), 1 / 3), candidates).tolist())


def test_hits_by_turn_and_intervals():
    def episode(ranks):
        scores = [[1.0 if r == 0 else 0.0, 0.5] for r in ranks]  # truth 0 first iff rank 0
        return Episode([["a"], ["b"]], 0, Transcript([]), {"x": scores})

    rows = hits_by_turn([episode([0, 0]), episode([1, 0]), episode([1, 1]), episode([1, 0])], "x")
    assert [r["hits1"] for r in rows] == [0.25, 0.75]
    assert rows[0]["low"] < 0.25 < rows[0]["high"] and turns_to(rows) == 2
    assert wilson(0, 10)[0] == 0.0 and 0 < wilson(0, 10)[1] < 0.35
    # paired: the same interviews, one policy finds the truth in two more of four at turn 1, in none more at turn 2
    better = [episode([0, 0]), episode([0, 0]), episode([1, 1]), episode([0, 0])]
    rows = paired_difference(better, [episode([0, 0]), episode([1, 0]), episode([1, 1]), episode([1, 0])], "x")
    assert rows[0]["points"] == 50.0 and 0.0 <= rows[0]["low"] < 50.0 < rows[0]["high"] <= 100.0
    assert rows[1] == {"turn": 2, "points": 0.0, "low": 0.0, "high": 0.0}
    with pytest.raises(ValueError):
        paired_difference(better, better[:2], "x")
    base = [episode([0, 0]), episode([1, 0]), episode([1, 1]), episode([1, 0])]
    assert paired_with({"random": base, "b": better}, "random") == {"b - random, x": rows}
    assert paired_with({"b": better}, "random") == {}


def test_verification_measures():
    assert roc_auc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert roc_auc([0.1, 0.9], [True, False]) == 0.0 and roc_auc([0.5, 0.5], [True, False]) == 0.5
    scores = [i / 100 for i in range(100)]
    genuine = [i >= 50 for i in range(100)]
    threshold = threshold_for(scores, genuine, 0.1)
    rates = error_rates(scores, genuine, threshold)
    assert rates["false_accept"] <= 0.1 and rates["false_reject"] == 0.0
    # a claim is the truth for even episodes, a distractor for odd ones
    e = Episode([["a"], ["b"], ["c"]], 1, Transcript([]), {"x": [[0.0, 2.0, 0.0]]})
    values, labels = claims([e, e], "x", 1)
    assert labels == [True, False] and values[0] > values[1]


def test_auth_commands(tmp_path):
    runner = CliRunner()
    head = tmp_path / "id.pt"
    trained = runner.invoke(app, ["auth", "train-identifier", "--model", "random:2x64", "--dialogues", "200",
                                  "--steps", "3", "--selfplay", "4", "--turns", "2", "--max-new-tokens", "4",
                                  "--out", str(head)])
    assert trained.exit_code == 0, trained.output
    assert "Hits@1 of 20" in trained.output and head.is_file()
    assert len(json.loads((tmp_path / "selfplay.json").read_text())) == 4
    common = ["--model", "random:2x64", "--identifier", str(head), "--max-new-tokens", "4", "--turns", "2"]
    run = tmp_path / "policy"
    policy = runner.invoke(app, ["auth", "train", *common, "--rounds", "2", "--episodes-per-round", "2",
                                 "--updates-per-round", "2", "-K", "4", "--calibration", "4", "--out", str(run),
                                 "--warm-start", str(tmp_path / "selfplay.json")])
    assert policy.exit_code == 0, policy.output
    assert {"policy.pt", "training.png", "thresholds.json", "checkpoint.pt"} <= {p.name for p in run.iterdir()}
    assert json.loads((run / "log.json").read_text())[0]["buffer"] == 4 * 2 + 2 * 2  # warm start + round 1
    result = runner.invoke(app, ["auth", "eval", *common, "--conversations", "3", "-K", "4", "--likelihood", "2",
                                 "--policy-path", str(run / "policy.pt"), "--thresholds", str(run / "thresholds.json"),
                                 "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert "| learned |" in result.output and "likelihood identifier" in result.output
    assert "sentence identifier" in result.output and "| learned | sentence@2 |" in result.output
    assert {"sentence", "embedding"} <= set(json.loads((run / "thresholds.json").read_text())["by_identifier"])
    assert "| learned - random, sentence | turn 1: " in result.output
    refit = runner.invoke(app, ["auth", "refit", "--run", str(run), "--updates", "50", "--calibration", "0",
                                "--out", str(tmp_path / "refit")])
    assert refit.exit_code == 0, refit.output
    assert json.loads((tmp_path / "refit" / "refit.json").read_text())["gamma"] == 0.0
    missing = runner.invoke(app, ["auth", "refit", "--run", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no such file" in missing.output and "Traceback" not in missing.output
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "checkpoint.pt").write_text("junk")
    junk = runner.invoke(app, ["auth", "refit", "--run", str(tmp_path / "junk"), "--calibration", "0"])
    assert junk.exit_code == 2 and "cannot refit" in junk.output and "Traceback" not in junk.output
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert len(saved["paired_vs_random"]["learned - random, likelihood"]) == 2  # turns, on the 2 rescored
    assert (tmp_path / "eval" / "hits_by_turn_embedding.png").is_file()
    assert (tmp_path / "eval" / "hits_by_turn_sentence.png").is_file()
    claim = tmp_path / "claim.json"
    claim.write_text(json.dumps({"persona": ["i like dogs.", "i am a pilot."]}))
    talk = runner.invoke(app, ["auth", "interact", *common, "-K", "4", "--policy-path", str(run / "policy.pt"),
                               "--thresholds", str(run / "thresholds.json"), "--claim", str(claim)],
                         input="i have a dog named max.\ni fly planes for a living.\n")
    assert talk.exit_code == 0, talk.output
    assert talk.output.count("  1. ") == 2 and ("ACCEPT: " in talk.output or "REJECT: " in talk.output)
    assert "Loading the persona list ..." in talk.output and "done in" in talk.output  # what loads, and how long
    assert "Loading the sentence identifier" in talk.output  # the policy named, not the shipped distilled one
    assert "Final ranking after 2 answers: the claimed persona is " in talk.output  # ends with the verdict
    assert talk.output.rstrip().endswith(("above it.", "below it."))
    # bad input: one line each, exit status 2
    claim.write_text("{not json")
    for args, message in [(["--claim", str(claim)], "not valid JSON"),
                          (["--claim", str(tmp_path / "missing.json")], "no such claim file"),
                          (["-K", "100000"], "distractors")]:
        bad = runner.invoke(app, ["auth", "interact", *common, *args])
        assert bad.exit_code == 2 and message in bad.output, bad.output
    for args, message in [(["--policy", "dqn"], "unknown policy"), (["--conversations", "5000"], "personas"),
                          (["-K", "5000"], "--candidates (-K) must be at most")]:
        bad = runner.invoke(app, ["auth", "eval", *common, *args])
        assert bad.exit_code == 2 and message in bad.output, bad.output
