"""The fast decoding path: a lean forward pass for the chat model's decoding steps, chosen by the CPU it runs on.

Profiling one decoding step of the bundled model (SmolLM2-135M: 30 layers, 576 wide) on the 2-core AMX CPU put
72% of it in matrix-vector products (bench/README.md, "Decoding speed"): a step reads every weight once, so its
cost is the bytes of the weights. fp32 weights are 540 MB; bf16 weights gain nothing with torch's bf16
matrix-vector kernels; int8 weights with a scale per output channel (``torch._weight_int8pack_mm``, bf16
activations) read a quarter of the bytes and run the step's products 2.1x faster. The rest of the step is
per-operation overhead of the transformers modelling code (casts, reshapes, rotary recomputation), which this
forward avoids: rotary tables computed once, one fused QKV and one fused gate-up product per layer in int8.

:class:`FastDecoder` is called like the transformers model it wraps (``input_ids``, ``cache``, ``position_ids``,
an ``attention_mask`` (the engine's 4D additive one, or transformers' 2D padding mask), ``logits_to_keep``) and
writes keys/values through the same ``Cache`` objects, so the session loop, the engine's slots and the
evaluation's batched replays work unchanged. Training and ``model.generate`` (beam search) stay on the reference
model.

``choose_fast_path`` decides per CPU: int8 weights where bf16 arithmetic is fast (AMX, AVX512-BF16), where the
measured gate holds (PPL/word on 100 validation dialogues within 1% of fp32); elsewhere the same lean forward over
the fp32 weights (no copy). ``PERSONAGPT_FAST_PATH=off|fp32|int8`` overrides it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch.nn import functional as F

from personagpt.errors import SettingsError
from personagpt.models.hardware import cpu_has_avx2, cpu_has_fast_bf16

MODES = ("off", "fp32", "int8")
KV_DTYPE = torch.bfloat16  # int8 path: keys, values and attention (the residual stream stays fp32)


@dataclass(frozen=True)
class FastPathChoice:
    """What the fast path runs with on this machine, and why (said at start-up and in /health)."""

    mode: str  # off, fp32 or int8
    reason: str

    def describe(self) -> str:
        what = {"off": "reference path (transformers)", "fp32": "fast path, fp32 weights",
                "int8": "fast path, int8 weights with bf16 activations"}[self.mode]
        return f"{what} ({self.reason})"


def choose_fast_path(requested: str | None = None, model=None) -> FastPathChoice:
    """The decoding path for this CPU. ``requested`` (or ``$PERSONAGPT_FAST_PATH``) may force one."""
    requested = requested or os.environ.get("PERSONAGPT_FAST_PATH") or "auto"
    if requested not in (*MODES, "auto"):
        raise SettingsError(f"the fast path must be auto, {', '.join(MODES)}; not {requested!r}")
    if model is not None and not supported(model):
        return FastPathChoice("off", f"no fast forward for {type(model).__name__}")
    if requested != "auto":
        return FastPathChoice(requested, "asked for")
    if model is not None and model.device.type != "cpu":
        return FastPathChoice("off", f"on {model.device.type}, the reference path")
    if cpu_has_fast_bf16():
        return FastPathChoice("int8", "this CPU has fast bf16: AMX or AVX512-BF16")
    if cpu_has_avx2():  # measured on an AVX2-only AMD EPYC: 31-43 ms/token in int8 against 55-62 in fp32
        return FastPathChoice("int8", "this CPU has AVX2, where int8 products beat fp32")
    return FastPathChoice("fp32", "this CPU lacks AVX2, where int8 products are untested")


def supported(model) -> bool:
    """Plain (not PEFT-wrapped) Llama- and GPT-2-family causal LMs."""
    config = getattr(model, "config", None)
    return (config is not None and getattr(config, "model_type", None) in ("llama", "gpt2")
            and not hasattr(model, "peft_config"))


def fast_decoder(model, mode: str | None = None):
    """``model``'s fast decoder for the mode this CPU gets (one per model and mode, cached on the model), or
    ``model`` itself when the reference path is chosen."""
    choice = choose_fast_path(mode, model)
    if choice.mode == "off":
        return model
    decoders = model.__dict__.setdefault("_personagpt_fast", {})
    if choice.mode not in decoders:
        decoders[choice.mode] = FastDecoder(model, int8=choice.mode == "int8")
    return decoders[choice.mode]


class _Linear:
    """``x @ W + b`` over the reference weights (fp32: a view, no copy) or int8 rows with a scale each."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, int8: bool) -> None:
        """``weight`` is [out, in]."""
        self.int8 = int8
        if int8:  # symmetric, one scale per output row; in slices of rows, so the head's temporaries stay small
            weight = weight.detach()
            self.scale = (weight.abs().amax(dim=1).float().clamp(min=1e-8) / 127).to(torch.bfloat16)
            self.weight = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
            for rows in torch.arange(weight.shape[0], device=weight.device).split(4096):
                scaled = weight[rows].float() / self.scale[rows].float().unsqueeze(1)
                self.weight[rows] = scaled.round_().clamp_(-127, 127).to(torch.int8)
            self.bias = None if bias is None else bias.detach().clone()
        else:
            self.weight_t = weight.detach().t()  # [in, out] view
            self.bias = None if bias is None else bias.detach()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        if self.int8:  # bf16 in and out of the int8 product; the caller's precision around it
            out = torch._weight_int8pack_mm(x.to(torch.bfloat16).contiguous(), self.weight, self.scale).to(x.dtype)
        else:
            out = x @ self.weight_t
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], out.shape[-1])


class FastDecoder:
    """A lean forward for Llama- and GPT-2-family models (see the module docstring). Read-only over the model:
    after the model's weights change (online teaching), build a new one."""

    def __init__(self, model, int8: bool = False) -> None:
        if not supported(model):
            raise SettingsError(f"no fast forward for {type(model).__name__}")
        self.reference = model
        self.config = model.config
        self.int8 = int8
        self.dtype = model.dtype  # the residual stream and norms: the reference's precision
        self.kv_dtype = KV_DTYPE if int8 else model.dtype  # keys, values and attention
        self.device = model.device
        self.llama = model.config.model_type == "llama"
        (self._build_llama if self.llama else self._build_gpt2)(model)

    # ---- weights -------------------------------------------------------------------------------------------------

    def _own(self, weight: torch.Tensor) -> torch.Tensor:
        """fp32: the reference's tensor itself (no copy, exact). int8: a copy of its own, so that the model can be
        converted afterwards (the server's bf16 copy) without this keeping the fp32 weights, or the whole
        memory-mapped checkpoint file they may view, alive."""
        weight = weight.detach()
        return weight.clone() if self.int8 else weight

    def _build_llama(self, model) -> None:
        cfg, body = model.config, model.model
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.eps = cfg.rms_norm_eps
        self.embed = self._own(body.embed_tokens.weight)
        self.layers = []
        for layer in body.layers:
            a, m = layer.self_attn, layer.mlp
            if self.int8:  # fused: one product for q, k, v and one for gate, up
                qkv = [_Linear(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
                               _cat_bias(a.q_proj, a.k_proj, a.v_proj), True)]
                gate_up = [_Linear(torch.cat([m.gate_proj.weight, m.up_proj.weight]), None, True)]
            else:
                qkv = [_Linear(p.weight, p.bias, False) for p in (a.q_proj, a.k_proj, a.v_proj)]
                gate_up = [_Linear(m.gate_proj.weight, None, False), _Linear(m.up_proj.weight, None, False)]
            self.layers.append(SimpleNamespace(
                norm1=self._own(layer.input_layernorm.weight), qkv=qkv,
                out=_Linear(a.o_proj.weight, a.o_proj.bias, self.int8),
                norm2=self._own(layer.post_attention_layernorm.weight), gate_up=gate_up,
                down=_Linear(m.down_proj.weight, None, self.int8)))
        self.final_norm = self._own(body.norm.weight)
        self.head_module = model.get_output_embeddings()
        self.head = _Linear(self.head_module.weight, None, self.int8)
        limit = getattr(cfg, "max_position_embeddings", 2048)
        with torch.no_grad():  # the model's own rotary embedding, once for every position
            probe = torch.zeros(1, 1, self.head_dim, device=self.device)
            cos, sin = body.rotary_emb(probe, torch.arange(limit, device=self.device).unsqueeze(0))
        self.cos, self.sin = cos[0].to(self.dtype), sin[0].to(self.dtype)

    def _build_gpt2(self, model) -> None:
        cfg, body = model.config, model.transformer
        self.heads = self.kv_heads = cfg.n_head
        self.head_dim = cfg.n_embd // cfg.n_head
        self.eps = cfg.layer_norm_epsilon
        self.embed, self.positions = self._own(body.wte.weight), self._own(body.wpe.weight)
        self.layers = []
        for block in body.h:  # Conv1D weights are [in, out]
            self.layers.append(SimpleNamespace(
                norm1=(self._own(block.ln_1.weight), self._own(block.ln_1.bias)),
                qkv=[_Linear(block.attn.c_attn.weight.t(), block.attn.c_attn.bias, self.int8)],
                out=_Linear(block.attn.c_proj.weight.t(), block.attn.c_proj.bias, self.int8),
                norm2=(self._own(block.ln_2.weight), self._own(block.ln_2.bias)),
                gate_up=[_Linear(block.mlp.c_fc.weight.t(), block.mlp.c_fc.bias, self.int8)],
                down=_Linear(block.mlp.c_proj.weight.t(), block.mlp.c_proj.bias, self.int8)))
        self.final_norm = (self._own(body.ln_f.weight), self._own(body.ln_f.bias))
        self.head_module = model.get_output_embeddings()
        self.head = _Linear(self.head_module.weight, None, self.int8)

    # ---- the forward ---------------------------------------------------------------------------------------------

    def _norm(self, x: torch.Tensor, weight) -> torch.Tensor:
        if self.llama:
            return F.rms_norm(x, (x.shape[-1],), weight, self.eps)
        return F.layer_norm(x, (x.shape[-1],), weight[0], weight[1], self.eps)

    @torch.inference_mode()
    def hidden(self, input_ids: torch.Tensor, cache=None, position_ids: torch.Tensor | None = None,
               attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Final-normed hidden states [B, q, width], extending ``cache`` (a transformers ``Cache``; none: the
        tokens alone, e.g. teacher forcing one sequence)."""
        batch, q = input_ids.shape
        past = (int(cache.get_seq_length()) if cache is not None else 0) if position_ids is None else None
        if position_ids is None:
            position_ids = torch.arange(past, past + q, device=self.device).unsqueeze(0).expand(batch, q)
        elif q > 1 and attention_mask is None and cache is not None:  # rows of equal length (scoring replies)
            past = int(cache.get_seq_length())
        mask = self._mask(attention_mask, q, past)
        x = self.embed[input_ids]
        if not self.llama:
            x = x + self.positions[position_ids]
        else:
            cos, sin = self.cos[position_ids].unsqueeze(1), self.sin[position_ids].unsqueeze(1)
        for index, layer in enumerate(self.layers):
            h = self._norm(x, layer.norm1)
            parts = [proj(h) for proj in layer.qkv]
            qkv = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
            split = (self.heads * self.head_dim, self.kv_heads * self.head_dim, self.kv_heads * self.head_dim)
            query, key, value = qkv.split(split, dim=-1)
            query = query.view(batch, q, self.heads, self.head_dim).transpose(1, 2)
            key = key.view(batch, q, self.kv_heads, self.head_dim).transpose(1, 2)
            value = value.view(batch, q, self.kv_heads, self.head_dim).transpose(1, 2)
            if self.llama:
                query, key = _rotate(query, cos, sin), _rotate(key, cos, sin)
            query, key, value = query.to(self.kv_dtype), key.to(self.kv_dtype), value.to(self.kv_dtype)
            if cache is not None:
                key, value = cache.update(key, value, index)
            attended = F.scaled_dot_product_attention(query, key, value, attn_mask=mask,
                                                      enable_gqa=self.kv_heads != self.heads)
            x = x + layer.out(attended.transpose(1, 2).reshape(batch, q, -1).to(self.dtype))
            h = self._norm(x, layer.norm2)
            if self.llama:
                if len(layer.gate_up) == 1:
                    gate, up = layer.gate_up[0](h).chunk(2, dim=-1)
                else:
                    gate, up = layer.gate_up[0](h), layer.gate_up[1](h)
                x = x + layer.down(F.silu(gate) * up)
            else:
                x = x + layer.down(F.gelu(layer.gate_up[0](h), approximate="tanh"))
        return self._norm(x, self.final_norm)

    def _mask(self, attention_mask: torch.Tensor | None, q: int, past: int | None):
        if attention_mask is not None:
            if attention_mask.dim() == 4:  # the engine's additive mask over its slots
                return attention_mask.to(self.kv_dtype)
            if not bool(attention_mask.all()):
                return self._padded_mask(attention_mask, q)
            attention_mask = None
        if q == 1:
            return None
        if past is None:
            raise SettingsError("several new tokens at given positions need a 4D attention mask")
        keys = torch.arange(past + q, device=self.device)
        return keys.unsqueeze(0) <= (past + torch.arange(q, device=self.device)).unsqueeze(1)

    def _padded_mask(self, attention_mask: torch.Tensor, q: int) -> torch.Tensor:
        """A transformers-style 2D mask over all tokens so far (0: padding) as [B, 1, q, keys]: causal and no
        padding, except that a padding query sees itself (a row with nothing to attend to would give NaNs)."""
        keys = attention_mask.shape[1]
        key_index = torch.arange(keys, device=self.device)
        query_at = keys - q + torch.arange(q, device=self.device)
        causal = key_index.unsqueeze(0) <= query_at.unsqueeze(1)
        visible = attention_mask.bool()[:, None, None, :] & causal[None, None]
        return visible | (key_index.unsqueeze(0) == query_at.unsqueeze(1))[None, None]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 next-token logits of final hidden states. Forward hooks on the model's output layer run on them,
        as they would in the reference forward (e.g. a test's hook that bans a token)."""
        logits = self.head(hidden).float()
        for hook in list(self.head_module._forward_hooks.values()):
            changed = hook(self.head_module, (hidden,), logits)
            logits = logits if changed is None else changed
        return logits

    def __call__(self, input_ids: torch.Tensor, cache=None, use_cache: bool = True,
                 position_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 logits_to_keep: int = 0, **_) -> SimpleNamespace:
        """The reference model's call, for the cached decoding loops: ``.logits`` [B, q or logits_to_keep, V]."""
        hidden = self.hidden(input_ids, cache, position_ids, attention_mask)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return SimpleNamespace(logits=self.logits(hidden))

    def body(self, input_ids, cache=None, position_ids=None, attention_mask=None, **_) -> SimpleNamespace:
        """The transformer body's view (the engine's, teacher forcing's): ``last_hidden_state``."""
        return SimpleNamespace(last_hidden_state=self.hidden(input_ids, cache, position_ids, attention_mask))


def _cat_bias(*projections):
    biases = [p.bias for p in projections]
    if all(b is None for b in biases):
        return None
    return torch.cat([b if b is not None else p.weight.new_zeros(p.weight.shape[0])
                      for b, p in zip(biases, projections)])


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin
