"""Character cards: V2 and V3, as JSON and inside PNGs, read into persona facts and greetings; ours written as a
V2 card that keeps what it does not use; malformed cards get one clear error."""

import base64
import json

import pytest

from personagpt.errors import DataError
from personagpt.personas.cards import (card_from_json, card_json, persona_card, png_with_text, read_card,
                                       write_card)

V2 = {"spec": "chara_card_v2", "spec_version": "2.0", "data": {
    "name": "Sam", "description": "{{char}} is a nurse. {{char}} has two dogs.",
    "personality": "She loves hiking. She talks to {{user}} kindly.", "scenario": "{{user}} meets {{char}} in a park.",
    "first_mes": "hi {{user}} ! i am {{char}} .", "alternate_greetings": ["hello there ."],
    "mes_example": "", "tags": ["nurse"], "extensions": {"depth_prompt": {"prompt": "x", "depth": 4}},
    "creator_notes": "made by hand"}, "something_else": 1}
V3 = {"spec": "chara_card_v3", "spec_version": "3.0", "data": {
    "name": "Leo", "description": "Leo grew up in Brazil. He enjoys surfing.", "personality": "", "scenario": "",
    "first_mes": "oi !", "alternate_greetings": [], "group_only_greetings": [], "extensions": {}}}


def test_v2_and_v3_json_give_facts_and_greetings(tmp_path):
    card = card_from_json(json.dumps(V2))
    assert card.persona().facts == ["i am a nurse.", "i have two dogs.", "i love hiking."]
    assert card.greetings() == ["hi there ! i am Sam .", "hello there ."]
    assert "{{" not in card.text()
    path = tmp_path / "leo.json"
    path.write_text(json.dumps(V3))
    leo = read_card(path)
    assert leo.name == "Leo" and leo.persona().facts == ["i grew up in brazil.", "i enjoy surfing."]


@pytest.mark.parametrize("keyword, card", [("chara", V2), ("ccv3", V3)])
def test_cards_in_png_chunks_are_read(tmp_path, keyword, card):
    path = tmp_path / "card.png"
    path.write_bytes(png_with_text(keyword, base64.b64encode(json.dumps(card).encode()).decode()))
    assert read_card(path).name == card["data"]["name"]


def test_a_round_trip_keeps_unknown_fields_and_extensions(tmp_path):
    card = card_from_json(V2)
    for suffix in (".json", ".png"):
        back = read_card(write_card(card, tmp_path / f"again{suffix}"))
        written = card_json(back)
        assert written["data"]["extensions"] == V2["data"]["extensions"] and written["something_else"] == 1
        assert written["data"]["creator_notes"] == "made by hand" and written["spec"] == "chara_card_v2"
        assert back.persona().facts == card.persona().facts


def test_our_persona_as_a_card_reads_back_as_the_same_facts(tmp_path):
    facts = ["i have two dogs.", "i am a nurse.", "i love hiking."]
    back = read_card(write_card(persona_card("Sam", facts, "hi !"), tmp_path / "sam.png"))
    assert back.persona().facts == facts and back.greetings() == ["hi !"]


def test_malformed_cards_get_one_clear_error(tmp_path):
    cases = {"nothing.json": None, "bad.json": b"{not json", "spec.json": json.dumps({"spec": "chara_card_v9",
                                                                                         "data": {}}).encode(),
             "noname.json": json.dumps({"spec": "chara_card_v2", "data": {"description": "x"}}).encode(),
             "plain.png": png_with_text("comment", "hello"), "b64.png": png_with_text("chara", "!!!not base64!!!"),
             "cut.png": png_with_text("chara", "abcd")[:30], "huge.json": b" " * (21 << 20)}
    for name, content in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(DataError) as error:
            read_card(path)
        assert name in str(error.value) and "\n" not in str(error.value), name


def test_the_chat_opens_with_the_cards_greeting_and_writes_our_card(tiny_checkpoint, tmp_path):
    from test_first_hour import run

    path = tmp_path / "sam.json"
    path.write_text(json.dumps(V2))
    out = tmp_path / "ours.png"
    result = run(["interact", "--model", tiny_checkpoint, "--card", path, "-turns", "1", "--max-new-tokens", "3",
                  "--save", tmp_path / "chat.jsonl"], f"/greeting\n/card {out}\nhello\n".encode())
    assert result.exit_code == 0, result.output
    assert "Card: Sam (2 greetings" in result.output and "Bot: hi there ! i am Sam ." in result.output
    assert "Persona: i am a nurse. i have two dogs. i love hiking." in result.output
    assert read_card(out).persona().facts == ["i am a nurse.", "i have two dogs.", "i love hiking."]
    saved = json.loads((tmp_path / "chat.jsonl").read_text())
    assert saved["turns"][0] == "hi there ! i am sam ." and saved["p1_facts"]  # the bot opened: it is p1
    bad = run(["interact", "--model", tiny_checkpoint, "--card", tmp_path / "none.png"], b"")
    assert bad.exit_code != 0 and "no such card file" in bad.output


def test_the_api_reads_a_card_file_for_the_page(tokenizer, fmt):
    """POST /v1/cards (what the page's Import sends): the facts, what was left out, the greetings; a chat that
    opens with the greeting is answered; a malformed card is a 400 naming it."""
    import httpx

    from conftest import LiveServer
    from personagpt.models.load import build_gpt2
    from personagpt.serve import ServerSettings, create_app

    model = build_gpt2(tokenizer, n_layer=1, n_embd=16, n_head=1, n_positions=256)
    png = png_with_text("chara", base64.b64encode(json.dumps(V2).encode()).decode())
    with LiveServer(create_app(ServerSettings(precision="no", max_context=256), loader=lambda: (model, fmt))) as live:
        read = httpx.post(live.url + "/v1/cards", content=png).json()
        assert read["name"] == "Sam" and read["persona"] and read["greetings"][0].startswith("hi")
        assert httpx.post(live.url + "/v1/cards", content=json.dumps(V2)).json()["persona"] == read["persona"]
        chat = httpx.post(live.url + "/v1/chat/completions", json={
            "persona": read["persona"], "max_tokens": 4,
            "messages": [{"role": "assistant", "content": read["greetings"][0]}, {"role": "user", "content": "hi !"}]})
        assert chat.status_code == 200
        bad = httpx.post(live.url + "/v1/cards", content=png_with_text("comment", "hello"))
        assert bad.status_code == 400 and "no 'chara' or 'ccv3'" in bad.json()["error"]["message"]
