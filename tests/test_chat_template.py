"""The PersonaGPT chat template: engines that prompt from OpenAI messages build exactly PromptFormat's ids."""

import pytest

from personagpt.format import CHAT_TEMPLATE, PromptFormat
from personagpt.models.load import BUNDLED_MODEL, load_tokenizer

from conftest import GPT2_BPE

FACTS = ["i like dogs.", " i am a nurse . "]
TURNS = ["hi there , how are you ?", "good , you ?", "great ! café 😀 <|p1|> is just text here"] * 20  # long


def ids_of(tokenizer, messages, **kwargs):
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **kwargs)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def messages(system: str, turns=TURNS):
    return [{"role": "system", "content": system}] + [
        {"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]


@pytest.mark.parametrize("path", [GPT2_BPE, BUNDLED_MODEL], ids=["gpt2", "smollm2"])
def test_template_gives_prompt_format_ids(path):
    tokenizer = load_tokenizer(path)
    fmt = PromptFormat(tokenizer)
    safe = [t.replace("<|p1|>", "p1") for t in TURNS]  # the template renders text: special-token strings in
    # messages would become tokens (PromptFormat never parses them); engines must not pass them through
    persona = messages("\n".join(FACTS), safe)
    assert ids_of(tokenizer, persona) == fmt.persona_prefix(FACTS) + fmt.history(safe)
    goal = "ask about pets."
    action = fmt.goal_prefix(goal, FACTS) + fmt.history(safe)
    assert ids_of(tokenizer, persona, goal=goal) == action  # the template variable
    assert ids_of(tokenizer, messages("\n".join(FACTS + [f"goal: {goal}"]), safe)) == action  # the system line
    opening = messages(f"goal: {goal}", [])
    assert ids_of(tokenizer, opening) == fmt.goal_prefix(goal)


def test_every_loaded_tokenizer_carries_the_template(tmp_path):
    tokenizer = load_tokenizer(GPT2_BPE)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    tokenizer.save_pretrained(tmp_path)
    assert load_tokenizer(tmp_path).chat_template == CHAT_TEMPLATE
    assert (BUNDLED_MODEL / "chat_template.jinja").read_text() == CHAT_TEMPLATE
