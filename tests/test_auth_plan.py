"""Questions that split the candidates: the exchange identifier, the options, the planner (expected information
gain by simulation), the distilled policy, resumable evaluation, and the commands that run them."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from personagpt.auth.interview import Episode, Lookahead, Question, View, candidate_sets, interview
from personagpt.auth.identify import ExchangeIdentifier, FactEmbeddings, SentenceIdentifier
from personagpt.auth.plan import (FEATURES, TOPIC_QUESTIONS, DistilledPolicy, Gated, Option, OptionScorer, Planner,
                                  RandomQuestionPolicy, agreement, distill, options)
from personagpt.auth.stores import play_resumable
from personagpt.cli import app
from personagpt.format import DEFAULT_ACTIONS
from personagpt.generate.conversation import SamplingConfig
from personagpt.control.selfplay import RandomPolicy, Transcript

PEOPLE = [["i have a dog.", "i work in a bank."], ["i play the piano.", "i live in ohio."],
          ["i have a dog.", "i play the piano."], ["i am a nurse.", "i love hiking."]]


@pytest.fixture(scope="module")
def facts():
    return FactEmbeddings()


def test_the_exchange_identifier_reads_yes_and_no_with_their_question(facts):
    yes = ExchangeIdentifier(facts, PEOPLE).add_exchange("that is cool . do you have a dog ?", "yes i do .")
    plain = SentenceIdentifier(facts, PEOPLE).add_exchange("that is cool . do you have a dog ?", "yes i do .")
    assert yes[0] > yes[1] and yes[2] > yes[3]  # the dog owners gain on a bare "yes"
    assert yes[0] - yes[1] > plain[0] - plain[1]  # which the sentence identifier alone cannot see
    no = ExchangeIdentifier(facts, PEOPLE).add_exchange("do you have a dog ?", "no , i do not .")
    assert no[0] < no[1] and no[2] < no[3]
    neither = ExchangeIdentifier(facts, PEOPLE)
    assert torch.allclose(neither.add_exchange("what do you do ?", "yes i do ."),
                          SentenceIdentifier(facts, PEOPLE).add_exchange("what do you do ?", "yes i do ."))
    # previews commit nothing and equal what committing gives
    identifier = ExchangeIdentifier(facts, PEOPLE)
    many = identifier.preview_many(["do you have a dog ?", "do you play the piano ?"], ["yes .", "no ."])
    assert identifier.total.abs().sum() == 0
    assert torch.allclose(many[1], identifier.add_exchange("do you play the piano ?", "no ."), atol=1e-5)


def test_options_ask_the_likely_candidates_facts_that_split_them(facts):
    scores = torch.tensor([2.0, 2.0, 0.0, -5.0])
    view = View(0, scores, [], candidates=PEOPLE)
    found = options(view, facts, count=3, top=2)
    asked = [o.action for o in found]
    assert all(isinstance(a, Question) for a in asked) and len(asked) == 3
    assert all(a.fact in PEOPLE[0] + PEOPLE[1] for a in asked)
    assert all(o.features.shape == (FEATURES,) for o in found)
    dog = next(o for o in found if o.action.fact == "i have a dog.")
    probabilities = torch.softmax(scores, 0)
    assert float(dog.features[2]) == pytest.approx(float(probabilities[0] + probabilities[2]), abs=1e-5)
    # a question asked already is not asked again; goal codes come after the questions, with their own features
    again = options(View(1, scores, [str(dog.action)], candidates=PEOPLE), facts, count=6, top=2,
                    codes=("ask about pets.",))
    assert dog.action not in [o.action for o in again] and again[-1].action == "ask about pets."
    assert again[-1].features[1] == 1.0


class ScriptedLookahead:
    """Answers by persona: the dog owners say yes to the dog question; every other question gets the same answer
    from everyone (it tells nothing)."""

    def __init__(self, identifier):
        self.identifier, self.asked = identifier, {}

    def questions(self, goals):
        return [f"tell me about {g}" for g in goals]

    def answers(self, questions, personas):
        return [["yes i do ." if "dog" in q and "i have a dog." in p else "no ." if "dog" in q else "i see ."
                 for p in personas] for q in questions]

    def scores_after(self, questions, answers):
        return self.identifier.preview_many(questions, answers)


def test_the_planner_takes_the_question_whose_answers_split_the_candidates(facts):
    view = View(0, torch.zeros(4), [], candidates=PEOPLE)
    view.lookahead = ScriptedLookahead(ExchangeIdentifier(facts, PEOPLE))
    record = []
    chosen = Planner(facts, questions=6, top=4, codes=("ask about pets.",), record=record).choose(view)
    assert isinstance(chosen, Question) and "dog" in chosen.text
    decision = record[0]
    assert decision["chosen"] == min(range(len(decision["expected"])),
                                     key=decision["expected"].__getitem__)
    assert len(decision["features"]) == len(decision["expected"]) > 1


class EchoingLookahead(ScriptedLookahead):
    """Everyone answers the dog question with a dog (an echo: it tells nothing), and the open question with the
    answering persona's own last fact (it tells who answers)."""

    def answers(self, questions, personas):
        return [["i have a dog ." if "dog" in q else p[-1] for p in personas] for q in questions]


def test_the_truth_criterion_is_not_fooled_by_answers_that_echo_the_question(facts, monkeypatch):
    view = View(0, torch.zeros(4), [], candidates=PEOPLE)
    view.lookahead = EchoingLookahead(SentenceIdentifier(facts, PEOPLE))
    echo, open_question = Question("do you have a dog ?", "i have a dog."), Question("what do you do for fun ?")
    offered = [Option(echo, torch.zeros(FEATURES)), Option(open_question, torch.zeros(FEATURES))]
    monkeypatch.setattr("personagpt.auth.plan.options", lambda *args, **kwargs: offered)
    truth, entropy = [], []
    assert Planner(facts, top=4, criterion="truth", record=truth).choose(view) == open_question
    Planner(facts, top=4, criterion="entropy", record=entropy).choose(view)
    # the echo leaves a low entropy (the mass on the dog owners) but makes the two who answered it unlikely
    assert truth[0]["expected"][0] > entropy[0]["expected"][0] + 1
    assert truth[0]["expected"][1] < truth[0]["expected"][0]
    with pytest.raises(ValueError, match="criterion"):
        Planner(facts, criterion="luck")


class RevealingLookahead(ScriptedLookahead):
    """The open exchange names the answering persona's own last fact (it tells who answers); the dog question
    only splits the four in two."""

    def questions(self, goals):
        made = [f"tell me about {g}" for g in goals]
        self.asked.update(zip(goals, made))
        return made

    def answers(self, questions, personas):
        return [[p[-1] if q.startswith("tell me") else "yes i do ." if "i have a dog." in p else "no ."
                 for p in personas] for q in questions]


def test_the_planner_leaves_random_goals_only_for_a_question_expected_to_tell_more(facts):
    transcript = Transcript(["i like tea."], ["hi ."], [])
    drawn = RandomPolicy(seed=3).next_goal(transcript)
    view = View(1, torch.zeros(4), [], candidates=PEOPLE, transcript=transcript)
    view.lookahead = RevealingLookahead(ExchangeIdentifier(facts, PEOPLE))
    record = []
    assert Planner(facts, top=4, baseline=RandomPolicy(seed=3), record=record).choose(view) == drawn
    assert len(record[0]["expected"]) > 1  # weighed against the fact questions
    assert drawn not in view.lookahead.asked  # the interviewer generates it itself, as in random's interview
    view.lookahead = ScriptedLookahead(ExchangeIdentifier(facts, PEOPLE))  # the open exchange tells nothing
    chosen = Planner(facts, top=4, baseline=RandomPolicy(seed=3)).choose(view)
    assert isinstance(chosen, Question) and "dog" in chosen.text


def test_open_topic_questions_are_offered_once_those_the_likely_candidates_talk_about_first(facts):
    view = View(0, torch.tensor([3.0, 0.0, 3.0, 0.0]), [], candidates=PEOPLE)
    found = options(view, facts, count=0, topics=2)
    assert [o.action for o in found][0] == Question(TOPIC_QUESTIONS["ask about pets."])  # both likely have a dog
    assert len(found) == 2 and all(o.features[1] == 1.0 for o in found)
    later = options(View(1, view.scores, [str(found[0].action)], candidates=PEOPLE), facts, count=0, topics=11)
    assert found[0].action not in [o.action for o in later] and len(later) == len(TOPIC_QUESTIONS) - 1


def test_a_gated_policy_pursues_random_goals_until_the_likely_candidates_hold_half_the_mass(facts):
    class Asking:
        def choose(self, view):
            return Question("do you have a dog ?")

    gated = Gated(Asking(), mass=0.6, top=2, seed=3)  # flat: the two likeliest hold 0.5
    flat = View(0, torch.zeros(4), [], candidates=PEOPLE)
    assert gated.choose(flat) in DEFAULT_ACTIONS and gated.choose(flat) == gated.choose(flat)  # seeded
    assert gated.choose(View(2, torch.tensor([3.0, 0.0, 0.0, 0.0]), [], candidates=PEOPLE)) == Question("do you have a dog ?")


def test_until_its_gate_opens_a_gated_interview_is_the_random_baselines(tiny_model, fmt, facts):
    from personagpt.control.selfplay import RandomPolicy

    class Asking:
        def choose(self, view):
            return Question("do you have a dog ?")

    (candidates, truth), = candidate_sets([PEOPLE[0]], PEOPLE, k=4, seed=0)
    played = {}
    for name, policy in {"random": RandomPolicy(seed=7), "never": Gated(Asking(), mass=1.1, seed=7),
                         "at once": Gated(Asking(), mass=0.0, seed=7)}.items():
        played[name] = interview(tiny_model, fmt, candidates, truth, policy, turns=3,
                                 sampling=SamplingConfig(max_new_tokens=4), seed=2,
                                 identifiers={"exchange": lambda c: ExchangeIdentifier(facts, c)})
    assert played["never"].transcript.actions == played["random"].transcript.actions
    assert played["never"].transcript.turns == played["random"].transcript.turns  # the same goals, said the same
    assert played["at once"].goals == ["ask: do you have a dog ?"] * 3


def test_calibrated_rates_weigh_a_yes_less_than_a_no(facts):
    from personagpt.auth.identify import partner_answer_rates

    assert partner_answer_rates(4)[0] == pytest.approx(0.959, abs=1e-3) and partner_answer_rates(1)[1] == 0.5
    question = "do you have a dog ?"

    def lift(answer, rates):  # what reading the answer with its question adds to the sentence identifier
        return (ExchangeIdentifier(facts, PEOPLE, rates=rates).add_exchange(question, answer)
                - SentenceIdentifier(facts, PEOPLE).add_exchange(question, answer))

    yes, no = lift("yes , i love my dog .", (0.97, 0.47)), lift("no , i do not .", (0.97, 0.47))
    assert yes[0] > 0 and yes[0] == yes[2] and yes[1] == yes[3] == 0  # only the dog owners move
    # by each answer's log-likelihood ratio, times how near their fact is to the question
    assert float(no[0] / yes[0]) == pytest.approx(math.log(0.03 / 0.53) / math.log(0.97 / 0.47), rel=1e-3)
    assert torch.allclose(lift("yes .", (0.5, 0.5)), torch.zeros(4))  # answers that tell holders from none: nothing
    # an answer that is not a yes or a no is read as the exchange identifier reads it
    calibrated = ExchangeIdentifier(facts, PEOPLE, rates=(0.97, 0.47))
    assert torch.allclose(calibrated.add_exchange("what do you do ?", "i bank ."),
                          ExchangeIdentifier(facts, PEOPLE).add_exchange("what do you do ?", "i bank ."))


def test_an_interview_says_a_question_action_as_written(tiny_model, fmt, facts):
    (candidates, truth), = candidate_sets([PEOPLE[0]], PEOPLE, k=4, seed=0)
    identifiers = {"exchange": lambda c: ExchangeIdentifier(facts, c)}
    sampling = SamplingConfig(max_new_tokens=4)
    episode = interview(tiny_model, fmt, candidates, truth, RandomQuestionPolicy(facts), turns=2, sampling=sampling,
                        seed=0, identifiers=identifiers)
    questions = episode.transcript.turns[::2]
    assert all(g.startswith("ask: ") and g[len("ask: "):] == q for g, q in zip(episode.goals, questions))
    assert questions[0] != questions[1]  # not asked twice
    # the planner over the real lookahead (a tiny random model, no engine): it runs and costs simulated replies
    planned = interview(tiny_model, fmt, candidates, truth, Planner(facts, questions=2, top=2), turns=1,
                        sampling=sampling, seed=0, identifiers=identifiers)
    assert planned.goals[0].startswith("ask: ") and len(planned.scores["exchange"]) == 1
    lookahead = Lookahead(tiny_model, fmt, [], ExchangeIdentifier(facts, candidates), sampling, seed=1)
    answers = lookahead.answers(["do you have a dog ?", "are you a nurse ?"], candidates[:3])
    assert len(answers) == 2 and all(len(row) == 3 for row in answers) and lookahead.rows == 6


def test_a_best_of_n_partner_is_simulated_by_its_denial_check(tiny_model, fmt, facts):
    from personagpt.generate.consistency import ConsistencyChecker

    trucker, other = ["i drive a red truck.", "i live in ohio."], ["i play the piano.", "i am a nurse."]
    lookahead = Lookahead(tiny_model, fmt, [], ExchangeIdentifier(facts, [trucker, other]), SamplingConfig(),
                          partner_candidates=3, checker=ConsistencyChecker())
    samples = ["no , i do not .", "yes i do .", "no ."]
    assert lookahead._faithful(samples, "do you drive a red truck ?", trucker) == "yes i do ."
    assert lookahead._faithful(samples, "do you drive a red truck ?", other) == "no , i do not ."  # no fact asked
    answers = lookahead.answers(["do you drive a red truck ?", "are you a nurse ?"], [trucker, other])
    assert [len(row) for row in answers] == [2, 2] and lookahead.rows == 12  # 3 samples for each answer

    seen = []

    class Recording(Planner):
        def choose(self, view):
            seen.append((view.lookahead.partner_candidates, view.lookahead.checker is not None))
            return super().choose(view)

    (candidates, truth), = candidate_sets([PEOPLE[0]], PEOPLE, k=4, seed=0)
    sampling = SamplingConfig(max_new_tokens=4)
    episode = interview(tiny_model, fmt, candidates, truth, Recording(facts, questions=2, top=2), turns=1,
                        sampling=sampling, seed=0, identifiers={"exchange": lambda c: ExchangeIdentifier(facts, c)},
                        partner_sampling=SamplingConfig(max_new_tokens=4, num_candidates=2))
    assert seen == [(2, True)] and len(episode.transcript.turns) == 2
    interview(tiny_model, fmt, candidates, truth, Recording(facts, questions=2, top=2), turns=1, sampling=sampling,
              seed=0, identifiers={"exchange": lambda c: ExchangeIdentifier(facts, c)})
    assert seen[-1] == (1, False)  # one sample: nothing to choose among


def test_distillation_learns_which_option_the_planner_picks(facts, tmp_path):
    g = torch.Generator().manual_seed(0)
    decisions = []
    for _ in range(300):  # the planner's pick: the option whose mass is nearest one half
        features = torch.rand(5, FEATURES, generator=g)
        features[:, 3] = 4 * features[:, 2] * (1 - features[:, 2])
        decisions.append({"features": features.tolist(), "chosen": int(features[:, 3].argmax())})
    scorer = distill(decisions[:250], steps=300)
    assert agreement(scorer, decisions[250:]) > 0.8
    restored = OptionScorer.load(scorer.save(tmp_path / "distilled.pt"))
    view = View(0, torch.tensor([2.0, 2.0, 0.0, -5.0]), [], candidates=PEOPLE)
    assert isinstance(DistilledPolicy(restored, facts).choose(view), Question)
    with pytest.raises(ValueError, match="no decision"):
        distill([{"features": [[0.0] * FEATURES], "chosen": 0}])


class CountingEnv:
    """Plays scripted interviews and counts which indices it was asked to play."""

    turns = 1

    def __init__(self, identifiers=None):
        self.played, self.identifiers = [], identifiers or {}

    def play(self, sets, policy, seed, on_episode, guide, indices):
        out = []
        for i in indices:
            self.played.append(i)
            episode = Episode(sets[i][0], sets[i][1], Transcript([], ["hi ?", f"i am {i} ."]), {"x": [[float(i)]]})
            on_episode(i, episode)
            out.append(episode)
        return out


def test_a_stopped_evaluation_resumes_without_replaying(tmp_path):
    sets = [([["a"], [str(i)]], 0) for i in range(5)]
    store = tmp_path / "episodes.jsonl"
    env = CountingEnv()
    first, played = play_resumable(env, sets[:3], None, 0, None, store)
    store.write_text(store.read_text() + '{"index": 4, "epis')  # a line cut short by the interruption
    class Length:  # an identifier added after the first run
        def __init__(self, candidates):
            pass

        def add_exchange(self, question, answer):
            return torch.tensor([float(len(answer))])

    again = CountingEnv({"x": None, "added": Length})
    everything, played_again = play_resumable(again, sets, None, 0, None, store)
    assert env.played == [0, 1, 2] and again.played == [3, 4] and (played, played_again) == (3, 2)
    assert [e.scores["x"] for e in everything[:3]] == [e.scores["x"] for e in first]
    assert [e.scores["added"] for e in everything[:3]] == [[[8.0]]] * 3  # the interviews read back are scored by it
    assert [e.candidates for e in everything] == [s[0] for s in sets]


def test_distill_and_eval_commands(tmp_path, monkeypatch):
    import personagpt.cli.auth as auth_cli

    class Bar:  # records what each progress bar counted
        def __init__(self, desc, total):
            self.desc, self.total, self.count = desc, total, 0
            bars.append(self)

        def update(self, n=1):  # as tqdm's
            self.count += n

        def close(self):
            pass

    bars: list[Bar] = []
    monkeypatch.setattr(auth_cli, "_bar", Bar)
    runner = CliRunner()
    common = ["--model", "random:2x64", "--max-new-tokens", "4", "--turns", "2", "-K", "4"]
    made = runner.invoke(app, ["auth", "distill", *common, "--interviews", "4", "--steps", "20", "--calibration", "4",
                               "--out", str(tmp_path / "distill")])
    assert made.exit_code == 0, made.output
    assert "agrees with the planner on" in made.output
    thresholds = json.loads((tmp_path / "distill" / "thresholds.json").read_text())
    assert thresholds["identifier"] == "calibrated" and thresholds["interviews"] == 4 and thresholds["k"] == 4
    assert len((tmp_path / "distill" / "decisions.jsonl").read_text().splitlines()) == 4
    other = runner.invoke(app, ["auth", "distill", *common, "--interviews", "4", "--steps", "20",
                                "--partner-candidates", "2", "--calibration", "0", "--out", str(tmp_path / "distill")])
    assert other.exit_code == 2 and "were made with" in other.output  # not mixed with decisions of another partner
    result = runner.invoke(app, ["auth", "eval", *common, "--conversations", "3", "--policy", "random",
                                 "--policy", "planner", "--policy", "distilled", "--distilled",
                                 str(tmp_path / "distill" / "distilled.pt"), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert "| planner - random, exchange | turn 1: " in result.output and "exchange identifier" in result.output
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(saved["results"]) == {"random", "planner", "distilled"}
    assert saved["results"]["planner"]["guide"] == "calibrated"
    assert saved["decoding"] == "exact" and saved["interviews"] == 3
    evaluated = [(b.desc, b.count) for b in bars if b.total == 3]
    assert evaluated == [("random", 3), ("planner", 3), ("distilled", 3)]  # each policy's bar counts its own
    fast = runner.invoke(app, ["auth", "eval", *common, "--conversations", "3", "--policy", "random",
                               "--decoding", "fast", "--out", str(tmp_path / "eval")])
    assert fast.exit_code == 2 and "played with decoding exact" in fast.output
    other_partner = runner.invoke(app, ["auth", "eval", *common, "--conversations", "3", "--policy", "random",
                                        "--partner-candidates", "2", "--out", str(tmp_path / "eval")])
    assert other_partner.exit_code == 2 and "played with partner candidates 1" in other_partner.output
    saved["results"]["planner"]["guide"] = "sentence"  # as if played by an older planner, guided otherwise
    (tmp_path / "eval" / "results.json").write_text(json.dumps(saved))
    other_guide = runner.invoke(app, ["auth", "eval", *common, "--conversations", "3", "--policy", "planner",
                                      "--out", str(tmp_path / "eval")])
    assert other_guide.exit_code == 2 and "were guided by the sentence identifier" in other_guide.output
    missing = runner.invoke(app, ["auth", "eval", *common, "--policy", "distilled", "--distilled",
                                  str(tmp_path / "nowhere.pt")])
    assert missing.exit_code == 2 and "no such distilled policy file" in missing.output


def test_exact_decoding_replays_interviews_word_for_word_in_other_batches(tiny_model, fmt):
    from personagpt.auth.interview import SelfPlay
    from personagpt.errors import SettingsError
    from personagpt.control.selfplay import RandomPolicy as Goals

    sets = candidate_sets(PEOPLE, PEOPLE, 3, 0)
    plays = []
    for workers in (4, 1):  # all four interviews batched together, then each alone (and a warm prefix cache)
        env = SelfPlay(tiny_model, fmt, None, 2, SamplingConfig(max_new_tokens=6), workers, sentence=False,
                       partner_candidates=2)
        try:
            assert env.engine.fast_path.mode == "fp32"
            plays.append([e.transcript.turns for e in env.play(sets, Goals(seed=1), seed=3)])
        finally:
            env.close()
    assert plays[0] == plays[1] and all(len(turns) == 4 for turns in plays[0])
    with pytest.raises(SettingsError, match="decoding"):
        SelfPlay(tiny_model, fmt, None, 2, decoding="approximate")


def test_evaluation_plays_every_policy_chunk_by_chunk_so_a_stopped_run_is_paired(tmp_path):
    from personagpt.auth.commands import evaluate

    class Stop(Exception):
        pass

    class ChunkedEnv(CountingEnv):
        workers, partner_candidates, decoding = 2, 1, "exact"

        def play(self, sets, policy, seed, on_episode, guide, indices):
            if policy == "fails late" and max(indices) >= 2:
                raise Stop
            return super().play(sets, policy, seed, on_episode, guide, indices)

    sets = [([["a"], [str(i)]], 0) for i in range(5)]
    ticks = {}

    def progress(name, total):
        ticks[name] = 0
        return lambda: ticks.__setitem__(name, ticks[name] + 1)

    env = ChunkedEnv()
    with pytest.raises(Stop):
        evaluate(env, sets, {"random": ("plays", None), "planner": ("fails late", None)}, tmp_path, progress=progress)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["interviews"] == 2 and saved["decoding"] == "exact"  # both policies, on the same first two sets
    assert env.played == [0, 1, 0, 1, 2, 3]  # random had started the second chunk when the planner stopped
    again = ChunkedEnv()
    evaluate(again, sets, {"random": ("plays", None), "planner": ("plays", None)}, tmp_path, progress=progress)
    assert again.played == [2, 3, 4, 4]  # the planner's 2 and 3, then 4 for each
    assert ticks == {"random": 5, "planner": 5}
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["interviews"] == 5
    # play counts add up over the resumed runs, as far as their chunks finished: random's second chunk was played
    # before the stop but its results were never written (2 counted), and it plays 1 now; the planner 2, then 3
    assert {n: r["played"]["interviews"] for n, r in saved["results"].items()} == {"random": 2 + 1, "planner": 2 + 3}
    evaluate(ChunkedEnv(), sets, {"random": ("plays", None)}, tmp_path)  # all read back: nothing added
    alone = json.loads((tmp_path / "results.json").read_text())
    assert alone["results"]["random"]["played"]["interviews"] == 3
    # the planner, not asked for this time, stays: measured again from its interviews, paired with random's
    assert alone["results"]["planner"] == saved["results"]["planner"]
    assert alone["paired_vs_random"] == saved["paired_vs_random"] != {}
    store = tmp_path / "episodes-planner.jsonl"
    store.write_text("\n".join(store.read_text().splitlines()[:2]) + "\n")  # its interviews 2-4 lost
    assert evaluate(ChunkedEnv(), sets, {"random": ("plays", None)}, tmp_path)["carried"] == ["planner"]
    carried = json.loads((tmp_path / "results.json").read_text())
    assert carried["results"]["planner"] == saved["results"]["planner"]  # carried over as it was
    assert carried["paired_vs_random"] == saved["paired_vs_random"]


def test_sampled_interviews_are_the_same_people_for_the_same_seed():
    from personagpt.auth.interview import sample_sets
    from personagpt.errors import SettingsError

    pool = [[f"fact {i}."] for i in range(30)]
    first = sample_sets(pool, 5, 4, seed=2)
    assert first == sample_sets(pool, 5, 4, seed=2) != sample_sets(pool, 5, 4, seed=3)
    assert all(len(c) == 4 and c[truth] in pool for c, truth in first)
    with pytest.raises(SettingsError, match="31 interviews"):
        sample_sets(pool, 31, 4)


def test_a_live_interview_plays_the_distilled_policy_as_auth_eval_does(tiny_model, fmt):
    from personagpt.auth.live import LiveInterview, judge_for

    scorer = OptionScorer()
    assert judge_for(scorer) == "calibrated" and judge_for() == "sentence"
    people = PEOPLE + [["i drive a truck."], ["i love tea."], ["i am a chef."], ["i have three sisters."]]
    live = LiveInterview(tiny_model, fmt, people, judge_for(scorer), scorer=scorer, max_new_tokens=4)
    action, _ = live.ask()
    assert action in DEFAULT_ACTIONS  # no candidate stands out yet: the gate pursues a random goal
    assert live.answer("i have a dog .").shape == (8,)
    live.scores = torch.tensor([6.0, 0, 0, 0, 0, 0, 0, 0])  # one candidate stands out: the policy asks
    action, question = live.ask()
    assert action.startswith("checks: ") and question.endswith("?")


def test_the_shipped_distilled_policy_and_its_thresholds_load():
    from personagpt.auth.live import judge_for
    from personagpt.auth.commands import load_distilled, load_thresholds

    scorer = load_distilled(None)  # resources/auth/distilled.pt: made for the current features
    assert scorer is not None and judge_for(scorer) == "calibrated"
    thresholds, note = load_thresholds(None, 20)
    assert note is None and set(thresholds["calibrated"]) == {str(t) for t in range(1, 9)}  # judged as it plays
