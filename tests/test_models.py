import time

import pytest
import torch

from personagpt.models.load import ModelNotFoundError, load_model, resolve_model_name, save_checkpoint


def test_checkpoint_round_trip(tiny_checkpoint, tiny_model):
    assert (tiny_checkpoint / "model.safetensors").is_file()
    model, tokenizer = load_model(tiny_checkpoint, device="cpu")
    assert tokenizer.convert_tokens_to_ids("<|act|>") == 50262
    ids = torch.tensor([[50261, 40, 588, 50256]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, tiny_model(ids).logits)


def test_unreachable_hub_id_fails_fast_and_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError, match="Pass --model with a local checkpoint"):
        load_model("someone/not-a-cached-model", device="cpu")
    assert time.monotonic() - start < 10


def test_bad_local_directory(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not a loadable model checkpoint"):
        load_model(tmp_path, device="cpu")


def test_no_bundled_model_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr("personagpt.models.load.BUNDLED_MODEL", tmp_path / "none")
    with pytest.raises(ModelNotFoundError, match="--model"):
        resolve_model_name(None)
    assert resolve_model_name("personagpt") == "af1tang/personaGPT"


def test_lora_adapter_directory_loads_with_its_base(tmp_path, tiny_checkpoint):
    from peft import LoraConfig, get_peft_model

    base, tokenizer = load_model(tiny_checkpoint, device="cpu")
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["c_attn"], init_lora_weights=False))
    adapter_dir = save_checkpoint(peft_model, tokenizer, tmp_path / "adapter")
    assert (adapter_dir / "adapter_config.json").is_file()
    loaded, _ = load_model(adapter_dir, device="cpu")
    ids = torch.tensor([[50261, 40, 588, 50256]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, peft_model(ids).logits, atol=1e-6)
