"""Questions about a thing of the same kind as a persona fact: the kind rules, the probe set built from validation
personas, the verdict on a reply, and the answer rule that bans the openings answering against the persona (in
the one token loop, the engine and the server)."""

import pytest
import torch

from personagpt.data.dialogues import load_dialogues
from personagpt.eval.probes import same_kind_probes, same_kind_verdict
from personagpt.generate.consistency import ConsistencyChecker, opening_ban
from personagpt.generate.conversation import Conversation, SamplingConfig
from personagpt.generate.loop import Sampler
from personagpt.personas.kinds import fact_kinds, match_kind, statement

from conftest import PERSONACHAT

PERSONA = ["i have two dogs.", "i am a nurse.", "i love hiking."]


def test_facts_have_kinds_and_things():
    assert fact_kinds("i've two dogs.") == {"pet": {"dog"}}
    assert fact_kinds("i'm a baby delivery nurse.") == {"job": {"nurse"}}
    assert fact_kinds("i am sam , a friendly nurse .") == {"job": {"nurse"}}  # a system prompt's "You are Sam, ..."
    assert fact_kinds("i am 24 years old.") == {"age": {24}}
    assert fact_kinds("i play the violin and the guitar.") == {"instrument": {"violin", "guitar"}}
    assert fact_kinds("i live in california but the market was dead.") == {"place": {"california"}}
    assert fact_kinds("i am a vegetarian.") == {"food": {"vegetarian"}}
    assert fact_kinds("i have three sisters.") == {"family": {("sister", 3)}}
    assert fact_kinds("i'm getting married in the spring.") == {"relationship": {"engaged"}}
    assert fact_kinds("mickey mouse is my favorite character.") == {}  # a mouse, but not a pet
    assert fact_kinds("my dad is a doctor.") == {}  # his job, not mine
    assert fact_kinds("i am married to a doctor.") == {"relationship": {"married"}}
    assert fact_kinds("i love hiking.") == {}


def test_questions_about_another_thing_of_a_kind_are_told_from_questions_about_the_fact():
    assert statement("do you have cats ?") == "i have cats"
    assert statement("is your favorite food sushi ?") == "my favorite food is sushi"
    assert match_kind("do you have cats ?", PERSONA).own is False
    assert match_kind("are you a doctor ?", PERSONA).fact == "i am a nurse."
    assert match_kind("do you have dogs ?", PERSONA).own is True
    assert match_kind("are you a nurse ?", PERSONA).own is True
    assert match_kind("do you have a pet ?", PERSONA) is None  # any pet: left to the meaning match
    assert match_kind("do you like hiking ?", PERSONA) is None
    assert match_kind("do you eat meat ?", ["i am a vegetarian."]).own is False
    assert match_kind("do you have a son ?", ["i have two kids."]).own is True
    assert match_kind("do you have three kids ?", ["i have two kids."]).own is False
    checker = ConsistencyChecker()
    other = checker.asked_fact("cool . do you have cats ?", PERSONA)
    assert (other.fact, other.expected, other.kind) == ("i have two dogs.", False, "pet")
    assert checker.denies("yes i love my dogs .", other) and not checker.denies("no , i have two dogs .", other)


def test_the_probe_set_has_300_questions_from_validation_personas_that_the_personas_do_not_have():
    dialogues = load_dialogues(PERSONACHAT / "valid_both_original_no_cands.txt")
    probes = same_kind_probes(dialogues, 400)
    assert len(probes) == 400 and len({p.kind for p in probes}) == 8
    for probe in probes:
        assert probe.fact in probe.persona and probe.turns[-1].endswith("?")
        assert not any(probe.asked in fact.lower().split() for fact in probe.persona)


def test_replies_are_judged_by_what_they_say_about_the_persona():
    probe = same_kind_probes(load_dialogues(PERSONACHAT / "valid_both_original_no_cands.txt"), 1)[0]
    own = probe.own_words[0]
    assert same_kind_verdict("no , i do not .", probe) == "consistent"
    assert same_kind_verdict(f"i have a {own} .", probe) == "consistent"
    assert same_kind_verdict(f"yes i love my {own} .", probe) == "against"
    assert same_kind_verdict("i do .", probe) == "against"
    assert same_kind_verdict(f"i love {probe.asked} !", probe) == "against"
    assert same_kind_verdict("i am sorry to hear that .", probe) == "neither"
    assert same_kind_verdict("what do you do for fun ?", probe) == "neither"


def test_opening_bans_cover_the_ways_a_reply_opens_with_yes_or_no(fmt):
    texts = {fmt.tokenizer.decode(list(seq)) for seq in opening_ban(fmt.tokenizer, False, fmt.eos_id)}
    assert {"yes", " Yeah", "i do ,", "i am .", "i do" + fmt.tokenizer.decode([fmt.eos_id])} <= texts
    assert "i have two" not in texts and "no" not in texts
    assert {"ye", "ye" + "ah"} <= texts and "in" not in texts  # "yeah" in any spelling; "in" of "in"+"deed" stays
    texts = {fmt.tokenizer.decode(list(seq)) for seq in opening_ban(fmt.tokenizer, True, fmt.eos_id)}
    assert {"no", " Nope" if len(fmt.tokenizer.encode(" Nope")) == 1 else " No", "i do not", "i don't"} <= texts


def test_the_sampler_bans_each_sequence_at_its_last_token(fmt):
    sampler = Sampler(fmt, "cpu")
    i, do, comma = (fmt.tokenizer.encode(t)[0] for t in ("i", " do", " ,"))
    cfg = SamplingConfig(do_sample=False, opening_ban=((i, do, comma),))
    row = sampler.row(cfg, [1, 2])
    for wanted in (i, do):  # the greedy pick while the opening is incomplete
        logits = torch.zeros(1, len(fmt.tokenizer))
        logits[0, wanted] = 5.0
        assert sampler.pick(logits, [row]) == [wanted]
    logits = torch.zeros(1, len(fmt.tokenizer))
    logits[0, comma], logits[0, 7] = 5.0, 4.0
    assert sampler.pick(logits, [row]) == [7]  # "i do ," is banned: the next best
    logits[0, 7] = 0.0
    assert sampler.pick(logits, [row]) == [comma]  # only as an opening


def test_a_turn_bans_the_openings_only_after_a_question_about_the_persona(tiny_model, fmt):
    conversation = Conversation.with_persona(tiny_model, fmt, PERSONA, seed=0)
    conversation.add_turn("hi ! do you have cats ?")
    banned = conversation.turn_sampling().opening_ban
    assert tuple(fmt.tokenizer.encode("yes")) in banned and tuple(fmt.tokenizer.encode("no")) not in banned
    conversation.respond()
    reply = conversation.turns[-1].lower()
    assert not reply.startswith(("yes", "yeah", "sure"))
    conversation.add_turn("what do you do for fun ?")
    assert conversation.turn_sampling().opening_ban == ()
    conversation.respond()
    conversation.add_turn("do you have cats ?")
    assert conversation.turn_sampling(SamplingConfig(consistent_answers=False)).opening_ban == ()


@pytest.mark.parametrize("expected", [True, False])
def test_a_banned_opening_never_comes_out_of_any_path(tiny_model, fmt, expected):
    """Rig the tiny model's answer rule with every opening of one polarity banned: greedy, sampled, best-of-N and
    the engine never start with one."""
    from personagpt.generate.engine import Engine

    question = "do you have dogs ?" if expected else "do you have cats ?"
    bans = opening_ban(fmt.tokenizer, expected, fmt.eos_id)
    firsts = {seq[0] for seq in bans if len(seq) == 1}
    engine = Engine(tiny_model, fmt, max_batch=8)
    try:
        for sampling in (SamplingConfig(do_sample=False, num_candidates=1), SamplingConfig(num_candidates=1),
                         SamplingConfig(num_candidates=3, commit_tokens=2)):
            for eng in (None, engine):
                for seed in range(3):
                    conversation = Conversation.with_persona(tiny_model, fmt, PERSONA, seed=seed, engine=eng,
                                                             sampling=sampling)
                    conversation.add_turn(question)
                    conversation.respond()
                    assert conversation.turn_ids[-1][0] not in firsts
    finally:
        engine.close()


def test_yes_no_first_opens_with_the_answer_the_persona_implies(tiny_model, fmt):
    from personagpt.generate.consistency import yes_no_openers

    for question, expected in (("do you have cats ?", False), ("are you a nurse ?", True)):
        allowed = set(yes_no_openers(fmt.tokenizer, expected))
        for seed in range(3):
            conversation = Conversation.with_persona(tiny_model, fmt, PERSONA, seed=seed,
                                                     sampling=SamplingConfig(yes_no_first=True, num_candidates=1))
            conversation.add_turn(question)
            conversation.respond()
            assert conversation.turn_ids[-1][0] in allowed
    conversation.add_turn("what do you do for fun ?")  # not a yes/no question about the persona: free
    assert conversation.turn_sampling().opening_only == ()
