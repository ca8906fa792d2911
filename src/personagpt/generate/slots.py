"""Where the engine's rows keep their keys/values and how a batch of them runs forward: the engine's backend.

The engine (:mod:`personagpt.generate.engine`) schedules requests onto numbered *slots* and samples every token
itself; a backend only runs the model. Two backends share this small interface:

* :class:`TorchSlots` (here): one buffer per layer ``[slots, kv_heads, capacity, head_dim]`` and the fast path's
  forward (:mod:`personagpt.models.fastpath`), with a prefix cache of finished sequences' keys/values.
* :class:`~personagpt.generate.llamacpp.LlamaCppSlots`: llama.cpp's batched decode over the model's GGUF export,
  one llama.cpp sequence per slot (chosen automatically when llama-cpp-python is installed; see
  :func:`choose_backend`).

The interface: ``reuse(slot, prompt)`` loads the longest cached prefix of ``prompt`` into ``slot``;
``forward(first, chunks, starts)`` feeds ``chunks[b]`` to slot ``first + b`` from position ``starts[b]`` and returns
the next-token logits after each chunk; ``copy`` a slot's first tokens into another; ``retire`` a slot's sequence into
the prefix cache; ``move`` a slot to another number (active slots stay contiguous).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from transformers.cache_utils import Cache, DynamicLayer

from personagpt.errors import SettingsError
from personagpt.format import PromptFormat
from personagpt.generate.kvcache import PrefixCache, ReservedCache
from personagpt.models.fastpath import choose_fast_path, fast_decoder
from personagpt.scoring import decoder_and_head

BACKENDS = ("torch", "llama.cpp")


def choose_backend(requested: str | None, model, rows: int = 1) -> tuple[str, str]:
    """``(backend, why)`` for an engine of ``rows`` slots over ``model``: llama.cpp where llama-cpp-python is
    installed and the model exports to GGUF on a CPU, else torch. ``requested`` (or ``$PERSONAGPT_BACKEND``) may
    force one."""
    requested = requested or os.environ.get("PERSONAGPT_BACKEND") or "auto"
    if requested not in (*BACKENDS, "auto"):
        raise SettingsError(f"the backend must be auto, {', '.join(BACKENDS)}; not {requested!r}")
    from personagpt.generate import llamacpp

    problem = llamacpp.unavailable(model, rows)
    if requested == "llama.cpp":
        if problem:
            raise SettingsError(f"the llama.cpp backend cannot run here: {problem}")
        return "llama.cpp", "asked for"
    if requested == "torch":
        return "torch", "asked for"
    if problem:
        return "torch", problem
    return "llama.cpp", "llama-cpp-python is installed"


class _SlotLayer(DynamicLayer):
    """One layer's keys/values for a forward over slot rows ``first:first+n``: row b writes its q new keys/values
    at its own positions ``positions[b]`` ([n, q]) and attends over the first ``width`` cells of its slot."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, first: int, positions: torch.Tensor,
                 width: int) -> None:
        super().__init__()
        self._k, self._v, self._first, self._positions, self._width = keys, values, first, positions, width
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        rows = slice(self._first, self._first + key_states.shape[0])
        index = torch.arange(rows.start, rows.stop, device=key_states.device).unsqueeze(1)
        self._k[index, :, self._positions] = key_states.transpose(1, 2)
        self._v[index, :, self._positions] = value_states.transpose(1, 2)
        self.keys, self.values = self._k[rows, :, : self._width], self._v[rows, :, : self._width]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._width - 1

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._width, 0


class TorchSlots:
    """Slot rows in torch buffers, run by the fast path (or the reference model) chosen for this CPU."""

    name = "torch"

    def __init__(self, model, fmt: PromptFormat, max_batch: int, capacity: int, prefix_cache_tokens: int,
                 fast: str | None = None) -> None:
        self.fast_path = choose_fast_path(fast, model)
        self.decoder = fast_decoder(model, self.fast_path.mode)
        self._decoder, self._head = decoder_and_head(self.decoder)
        self.fmt, self.max_batch, self.capacity, self.device = fmt, max_batch, capacity, model.device
        self.prefix_cache = PrefixCache(prefix_cache_tokens)
        self._buffers: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def describe(self) -> str:
        return self.fast_path.describe()

    def _ensure_buffers(self) -> None:
        """Allocate the slot buffers once, shaped from one tiny forward (kv heads and head size per layer)."""
        if self._buffers is not None:
            return
        probe = ReservedCache()
        self.decoder(torch.tensor([[self.fmt.eos_id]], device=self.device), cache=probe, use_cache=True)
        self._buffers = []
        for layer in probe.layers:
            _, heads, _, dim = layer.keys.shape
            shape = (self.max_batch, heads, self.capacity, dim)
            self._buffers.append((layer.keys.new_zeros(shape), layer.values.new_zeros(shape)))

    def reuse(self, slot: int, prompt: Sequence[int]) -> int:
        self._ensure_buffers()
        shared, kv = self.prefix_cache.longest(prompt, len(prompt) - 1)
        for (kb, vb), (k, v) in zip(self._buffers, kv if kv is not None else ()):
            kb[slot, :, :shared] = k[:, :shared]
            vb[slot, :, :shared] = v[:, :shared]
        return shared

    def forward(self, first: int, chunks: Sequence[Sequence[int]], starts: Sequence[int]) -> torch.Tensor:
        self._ensure_buffers()
        width = max(len(c) for c in chunks)
        ids = torch.tensor([list(c) + [self.fmt.eos_id] * (width - len(c)) for c in chunks], device=self.device)
        begin = torch.tensor(starts, device=self.device).unsqueeze(1)
        positions = (begin + torch.arange(width, device=self.device)).clamp(max=self.capacity - 1)
        span = min(self.capacity, int(positions.max()) + 1)
        # row b's query i sees its slot's cells up to its own position (padding queries too: finite, unused)
        visible = torch.arange(span, device=self.device).view(1, 1, span) <= positions.unsqueeze(-1)
        dtype = self._buffers[0][0].dtype
        mask = torch.zeros(visible.shape, dtype=dtype, device=self.device).masked_fill_(~visible,
                                                                                       torch.finfo(dtype).min)
        cache = Cache(layers=[_SlotLayer(k, v, first, positions, span) for k, v in self._buffers])
        hidden = self._decoder(input_ids=ids, attention_mask=mask.unsqueeze(1), position_ids=positions, cache=cache,
                               use_cache=True).last_hidden_state
        last = torch.tensor([len(c) - 1 for c in chunks], device=self.device)
        picked = hidden[torch.arange(len(chunks), device=self.device), last]
        return self._head(picked.contiguous())

    def copy(self, source: int, target: int, length: int) -> None:
        for kb, vb in self._buffers:
            kb[target, :, :length] = kb[source, :, :length]
            vb[target, :, :length] = vb[source, :, :length]

    def retire(self, slot: int, sequence: Sequence[int]) -> None:
        # one block per entry ([layers, 2, heads, length, dim]), not two small tensors per layer: large blocks
        # go back to the OS when evicted, where thousands of small ones fragmented the heap of a long run
        length = len(sequence)
        self.prefix_cache.add(sequence, torch.stack([torch.stack([k[slot, :, :length], v[slot, :, :length]])
                                                     for k, v in self._buffers]))

    def move(self, source: int, target: int, length: int) -> None:
        self.copy(source, target, length)
