"""Persona-Chat's writing style both ways: what the model reads, what people see."""

import pytest

from personagpt.text import DisplayStream, for_people, to_model


@pytest.mark.parametrize("typed, model", [
    ("Hi, how are you?", "hi , how are you ?"),
    ("I'm a nurse. You?!", "i'm a nurse . you ? !"),
    ("it costs 3.50, or 1,000 in all.", "it costs 3.50 , or 1,000 in all ."),
    ("don\u2019t   go", "don't go"),
    ("hi , how are you ?", "hi , how are you ?"),  # already in the training style: unchanged
])
def test_to_model(typed, model):
    assert to_model(typed) == model


def test_for_people_joins_punctuation():
    assert for_people("i work as a nurse in a hospital .") == "i work as a nurse in a hospital."
    assert for_people("neat ! ! i am 3.5 feet , really ; ok ?") == "neat!! i am 3.5 feet, really; ok?"


def test_display_stream_pieces_join_to_the_whole():
    raw = "i am a nurse , do you like it ? i do !"
    for cut in (1, 2, 3, 5):
        pieces = [raw[i:i + cut] for i in range(0, len(raw), cut)]
        stream = DisplayStream()
        shown = [stream.push(p) for p in pieces] + [stream.flush()]
        assert "".join(shown) == for_people(raw)
        assert not any(s.endswith(" ") for s in shown[:-1])  # a space waits to see what follows it
