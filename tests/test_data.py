import json

import pytest

from personagpt.data.dialogues import DataError, Dialogue, load_dialogues, load_personas, parse_convai2, persona_fact, read_facts_file, write_jsonl

from conftest import PERSONACHAT

BOTH = """1 your persona: i like cats.
2 your persona: i am a nurse.
3 partner's persona: i drive a truck.
4 hi there !\thello , how are you ?
5 good . do you have pets ?\ti have two cats .
1 your persona: i love pizza.
2 __SILENCE__\thi , i like pizza .
3 me too !\tcool .
"""


def write(tmp_path, text, name="d.txt"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_partner_opens_then_your_speaker_is_p2(tmp_path):
    first, second = parse_convai2(write(tmp_path, BOTH))
    assert first.turns == ["hi there !", "hello , how are you ?", "good . do you have pets ?", "i have two cats ."]
    assert first.p1_facts == ["i drive a truck."]
    assert first.p2_facts == ["i like cats.", "i am a nurse."]
    assert [first.speaker_of(i) for i in range(4)] == [1, 2, 1, 2]
    # __SILENCE__: "your" speaker opens, so it is p1 and its facts are p1's
    assert second.turns == ["hi , i like pizza .", "me too !", "cool ."]
    assert second.p1_facts == ["i love pizza."] and second.p2_facts == []


def test_variants_none_other_and_candidates(tmp_path):
    none = parse_convai2(write(tmp_path, "1 hi\thello\n2 bye\tsee you\n"))
    assert none[0].turns == ["hi", "hello", "bye", "see you"] and not none[0].p1_facts and not none[0].p2_facts
    other = parse_convai2(write(tmp_path, "1 partner's persona: i ski.\n2 hi\thello\n"))
    assert other[0].p1_facts == ["i ski."] and other[0].p2_facts == []
    cands = parse_convai2(write(tmp_path, "1 your persona: i ski.\n2 hi\thello\t\tfoo|hello|bar\n"))
    assert cands[0].turns == ["hi", "hello"]


@pytest.mark.parametrize("text, message", [
    ("hello there\n", "d.txt:1: expected a line starting with a line number"),
    ("1 your persona: a.\n2 no tab here\n", "d.txt:2: expected 'x<TAB>y'"),
    ("1 hi\tthere\n2 __SILENCE__\tx\n", "d.txt:2: __SILENCE__ is only allowed"),
])
def test_malformed_convai2_names_file_and_line(tmp_path, text, message):
    with pytest.raises(DataError, match=message.replace("|", r"\|")):
        parse_convai2(write(tmp_path, text))


def test_non_utf8_file(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"1 hi\t\xff\xfe\n")
    with pytest.raises(DataError, match="not valid UTF-8"):
        load_dialogues(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_dialogues(tmp_path / "nope.txt")


def test_jsonl_round_trip_and_errors(tmp_path):
    dialogues = [Dialogue(turns=["a", "b", "c"], p1_facts=["x."], p2_facts=[]), Dialogue(turns=["hi"])]
    path = tmp_path / "d.jsonl"
    write_jsonl(dialogues, path)
    loaded = load_dialogues(path)
    assert [(d.turns, d.p1_facts, d.p2_facts) for d in loaded] == [(d.turns, d.p1_facts, d.p2_facts) for d in dialogues]
    bad = write(tmp_path, json.dumps({"turns": ["a"]}) + "\n{oops\n", "bad.jsonl")
    with pytest.raises(DataError, match="bad.jsonl:2: invalid JSON"):
        load_dialogues(bad)
    with pytest.raises(DataError, match="'turns' must be a list of strings"):
        load_dialogues(write(tmp_path, json.dumps({"turns": "hi"}) + "\n", "bad2.jsonl"))


def test_real_validation_split():
    dialogues = load_dialogues(PERSONACHAT / "valid_both_original_no_cands.txt")
    assert len(dialogues) == 1000
    # 7,801 exchanges; every episode here is opened by the partner, so each exchange is two turns
    assert sum(len(d.turns) for d in dialogues) == 2 * 7801
    assert all(d.p1_facts and d.p2_facts for d in dialogues)
    assert dialogues[0].p2_facts[0] == "i read twenty books a year."
    assert dialogues[0].turns[0] == "hello what are doing today ?"


def test_real_training_files():
    train = load_dialogues(PERSONACHAT / "train_self_partial_no_cands.txt")
    assert len(train) == 2072
    # "self" variant: only the replying speaker's facts are known
    assert all(bool(d.p1_facts) != bool(d.p2_facts) for d in train)
    synthetic = load_dialogues(PERSONACHAT / "synthetic_test_both_no_cands.txt")
    assert len(synthetic) == 965


def test_personas_and_facts_files(tmp_path):
    personas = load_personas(PERSONACHAT / "personas_train.jsonl")
    assert len(personas) == 17878 and all(3 <= len(p) <= 5 for p in personas)
    # the list detaches the final full stop ("i like to hunt ."); the model learned facts with it attached
    assert not any(f.endswith((" .", " !", " ?")) for p in personas for f in p)
    assert persona_fact(" i am in college . ") == "i am in college." and persona_fact("hi , you .") == "hi , you."
    facts = write(tmp_path, "i like dogs.\n\n  i am tall.  \n", "facts.txt")
    assert read_facts_file(facts) == ["i like dogs.", "i am tall."]
