"""Exports for other engines: a merged Hugging Face checkpoint (vLLM, TGI) and a GGUF file (llama.cpp, Ollama).

Both carry the PersonaGPT chat template, so an engine that builds prompts from OpenAI messages builds the ones
the model was trained on, and name the right end-of-turn token.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import GenerationConfig

from personagpt.errors import SettingsError
from personagpt.format import CHAT_TEMPLATE, PromptFormat

HF_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
GGUF_DTYPES = ("f32", "f16", "bf16", "q8_0")


def export_hf(model, fmt: PromptFormat, out: str | Path, dtype: str = "float32") -> Path:
    """A plain checkpoint (LoRA merged, safetensors), the tokenizer with the chat template, and generation
    settings that stop at the end-of-turn token and never emit the format's special tokens."""
    if dtype not in HF_DTYPES:
        raise SettingsError(f"--dtype for hf must be one of {', '.join(HF_DTYPES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = model.to(HF_DTYPES[dtype])
    model.save_pretrained(out)
    fmt.tokenizer.chat_template = CHAT_TEMPLATE
    fmt.tokenizer.save_pretrained(out)
    GenerationConfig(eos_token_id=fmt.eos_id, pad_token_id=fmt.tokenizer.pad_token_id,
                     bos_token_id=getattr(model.config, "bos_token_id", None), do_sample=True, top_k=10, top_p=0.92,
                     suppress_tokens=list(fmt.special_ids)).save_pretrained(out)
    for written in out.iterdir():  # safetensors writes 0600; an engine running as another user must read it
        if written.is_file():
            written.chmod(0o644)
    return out


def export_gguf(model, fmt: PromptFormat, out: str | Path, dtype: str = "f16") -> Path:
    """A GGUF file (llama or gpt2 architecture) with the tokenizer and the chat template embedded."""
    if dtype not in GGUF_DTYPES:
        raise SettingsError(f"--dtype for gguf must be one of {', '.join(GGUF_DTYPES)}")
    kind = model.config.model_type
    if kind not in ("llama", "gpt2"):
        raise SettingsError(f"GGUF export supports llama- and gpt2-type models, not {kind!r}")
    out = Path(out)
    if out.suffix != ".gguf":
        out = out / "model.gguf" if out.is_dir() or not out.suffix else out.with_suffix(".gguf")
    out.parent.mkdir(parents=True, exist_ok=True)
    arch = gguf.MODEL_ARCH.LLAMA if kind == "llama" else gguf.MODEL_ARCH.GPT2
    name = gguf.MODEL_ARCH_NAMES[arch]
    writer = gguf.GGUFWriter(str(out), name)
    _write_config(writer, model.config, kind, dtype)
    _write_tokenizer(writer, fmt)
    names = gguf.get_tensor_name_map(arch, model.config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name.endswith((".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")):
            continue  # buffers, not weights
        if hf_name == "lm_head.weight" and getattr(model.config, "tie_word_embeddings", False):
            continue  # tied to the token embedding: llama.cpp and transformers both reuse it
        data = _prepare(hf_name, tensor.detach().float(), model.config, kind)
        target = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise SettingsError(f"no GGUF name for tensor {hf_name}")
        _add_tensor(writer, target, data, dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _write_config(writer, config, kind: str, dtype: str) -> None:
    if kind == "llama":
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads)
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_rope_freq_base(float(getattr(config, "rope_theta", None) or
                                        (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)))
        writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
        writer.add_vocab_size(config.vocab_size)
    else:
        writer.add_context_length(config.n_positions)
        writer.add_embedding_length(config.n_embd)
        writer.add_block_count(config.n_layer)
        writer.add_feed_forward_length(config.n_inner or 4 * config.n_embd)
        writer.add_head_count(config.n_head)
        writer.add_layer_norm_eps(config.layer_norm_epsilon)
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype])


def _write_tokenizer(writer, fmt: PromptFormat) -> None:
    """Byte-level BPE as llama.cpp reads it: tokens by id, their types, merges, special ids, the template."""
    tokenizer = fmt.tokenizer
    vocab = tokenizer.get_vocab()
    tokens = [""] * len(vocab)
    for token, index in vocab.items():
        tokens[index] = token
    special = set(tokenizer.all_special_ids) | set(fmt.special_ids) | {fmt.eos_id}
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))]
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2" if "Ġ" in vocab and len(vocab) > 50000 else "smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_eos_token_id(fmt.eos_id)
    writer.add_eot_token_id(fmt.eos_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    if tokenizer.bos_token_id is not None:
        writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)


def _prepare(name: str, tensor: torch.Tensor, config, kind: str) -> np.ndarray:
    """A tensor in llama.cpp's layout: rotary heads interleaved for llama q/k, GPT-2's Conv1D weights
    transposed to [out, in]."""
    if kind == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
        heads = config.num_attention_heads if name.endswith("q_proj.weight") else config.num_key_value_heads
        tensor = tensor.reshape(heads, 2, tensor.shape[0] // heads // 2, *tensor.shape[1:]).swapaxes(1, 2)
        tensor = tensor.reshape(-1, *tensor.shape[3:])
    if kind == "gpt2" and name.endswith(("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight",
                                         "mlp.c_proj.weight")):
        tensor = tensor.T
    return tensor.contiguous().numpy()


def _add_tensor(writer, name: str, data: np.ndarray, dtype: str) -> None:
    if data.ndim < 2 or dtype == "f32":  # norms and biases stay fp32, as llama.cpp's converter keeps them
        writer.add_tensor(name, data.astype(np.float32))
    elif dtype == "f16":
        writer.add_tensor(name, data.astype(np.float16))
    elif dtype == "bf16":
        writer.add_tensor(name, gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.BF16),
                          raw_dtype=gguf.GGMLQuantizationType.BF16)
    elif data.shape[-1] % 32 == 0:  # q8_0 works on blocks of 32 along a row
        writer.add_tensor(name, gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.Q8_0),
                          raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
        writer.add_tensor(name, data.astype(np.float16))
