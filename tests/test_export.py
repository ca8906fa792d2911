"""Exports round-trip: the merged checkpoint and the GGUF file load back with transformers and give the same
logits as the source model on real validation prompts."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from personagpt.cli import app
from personagpt.data.dialogues import load_dialogues
from personagpt.format import CHAT_TEMPLATE
from personagpt.models.load import build_gpt2, save_checkpoint

from conftest import PERSONACHAT

# relative to the largest logit: f16/bf16 round weights to 11/8 bits, q8_0 to 8-bit blocks of 32
TOLERANCE = {"f32": 1e-6, "f16": 2e-3, "bf16": 1e-2, "q8_0": 3e-2}


@pytest.fixture(scope="module")
def source(tokenizer, tmp_path_factory):
    # 1024 positions: transformers reads a GPT-2 GGUF's context length as n_ctx and keeps n_positions at 1024
    model = build_gpt2(tokenizer, n_layer=2, n_embd=64, n_head=2, n_positions=1024, seed=3)
    return model, save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("src") / "model")


def prompts(fmt, count=3):
    dialogues = load_dialogues(PERSONACHAT / "valid_both_original_no_cands.txt")[:count]
    return [fmt.persona_prefix(d.p2_facts) + fmt.history(d.turns[:5]) for d in dialogues]


def logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


@pytest.mark.parametrize("dtype", ["f16", "q8_0", "f32"])
def test_gguf_export_round_trips(source, fmt, tmp_path, dtype):
    model, path = source
    result = CliRunner().invoke(app, ["export", "--model", str(path), "--format", "gguf", "--dtype", dtype,
                                      "--out", str(tmp_path / "model.gguf")])
    assert result.exit_code == 0, result.output
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="model.gguf")
    for ids in prompts(fmt):
        want, got = logits(model, ids), logits(back, ids)
        assert (got - want).abs().max() <= TOLERANCE[dtype] * want.abs().max()
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="model.gguf")
    text = "hi , how are you ? i have two dogs ."
    assert tokenizer.encode(text, add_special_tokens=False) == fmt.text(text)
    assert tokenizer.convert_tokens_to_ids("<|act|>") == fmt.act_id


def test_hf_export_is_a_plain_checkpoint_with_template_and_eos(source, fmt, tmp_path):
    model, path = source
    result = CliRunner().invoke(app, ["export", "--model", str(path), "--out", str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"))
    ids = prompts(fmt, 1)[0]
    assert torch.allclose(logits(back, ids), logits(model, ids), atol=1e-5)
    assert AutoTokenizer.from_pretrained(str(tmp_path / "hf")).chat_template == CHAT_TEMPLATE
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == fmt.eos_id and set(fmt.special_ids) <= set(generation["suppress_tokens"])
    assert list((tmp_path / "hf").glob("*.safetensors"))


def test_export_bad_input(source, tmp_path):
    _, path = source
    bad = CliRunner().invoke(app, ["export", "--model", str(path), "--format", "onnx", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "--format" in bad.output
    bad = CliRunner().invoke(app, ["export", "--model", str(path), "--format", "gguf", "--dtype", "q4",
                                   "--out", str(tmp_path / "m.gguf")])
    assert bad.exit_code == 2 and "q8_0" in bad.output


def test_export_checks_its_options_before_loading(tmp_path):
    from typer.testing import CliRunner

    from personagpt.cli import app

    result = CliRunner().invoke(app, ["export", "--format", "gguf", "--dtype", "q4", "--out", str(tmp_path / "m")])
    assert result.exit_code == 2
    assert "f32, f16, bf16, q8_0" in result.output and "'q4'" in result.output
    assert "Loading" not in result.output and "Writing" not in result.output
