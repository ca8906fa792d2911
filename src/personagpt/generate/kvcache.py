"""KV caches and single-token forward steps for decoding.

:class:`ReservedCache` appends in place into a preallocated buffer (grown by doubling) instead of concatenating
the whole cache every token; :func:`compiled_step` runs the single-token forward under ``torch.compile`` over a
fixed-shape ``StaticCache``; :class:`PrefixCache` keeps finished sequences' keys/values for prompts that start
with them (the engine's prefix cache).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from transformers.cache_utils import Cache, DynamicLayer, StaticCache


class _ReservedLayer(DynamicLayer):
    """A KV layer that writes into a preallocated buffer, grown by doubling, instead of re-concatenating."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self._length = 0
        self._keys = key_states.new_empty(*key_states.shape[:2], 0, key_states.shape[3])
        self._values = value_states.new_empty(*value_states.shape[:2], 0, value_states.shape[3])
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self._length + key_states.shape[-2]
        if end > self._keys.shape[-2]:
            capacity = max(end, 2 * self._keys.shape[-2], 256)
            self._keys = _grow(self._keys, self._length, capacity)
            self._values = _grow(self._values, self._length, capacity)
        self._keys[..., self._length:end, :] = key_states
        self._values[..., self._length:end, :] = value_states
        self._length = end
        self.keys, self.values = self._keys[..., :end, :], self._values[..., :end, :]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._length if self.is_initialized else 0

    def crop(self, tokens_to_remove: int) -> None:
        if self.is_initialized and tokens_to_remove:
            self._length = max(0, self._length - abs(tokens_to_remove))
            self.keys, self.values = self._keys[..., : self._length, :], self._values[..., : self._length, :]


def _grow(buffer: torch.Tensor, length: int, capacity: int) -> torch.Tensor:
    bigger = buffer.new_empty(*buffer.shape[:2], capacity, buffer.shape[3])
    bigger[..., :length, :] = buffer[..., :length, :]
    return bigger


class ReservedCache(Cache):
    """A dynamic KV cache whose layers append in place (see :class:`_ReservedLayer`)."""

    def __init__(self) -> None:
        super().__init__(layer_class_to_replicate=_ReservedLayer)


def capacity(cache: Cache) -> float:
    """Tokens a cache can hold: a static cache is fixed at creation, ours grows."""
    return cache.get_max_length() if isinstance(cache, StaticCache) else float("inf")


Step = Callable[[torch.Tensor, Cache], torch.Tensor]


def eager_step(model) -> Step:
    """The model's single-token forward: next-token logits of one row, extending ``cache``."""

    def forward(token: torch.Tensor, cache: Cache) -> torch.Tensor:
        return model(token, cache=cache, use_cache=True).logits[0, -1]

    return forward


def compiled_step(model) -> Step:
    """:func:`eager_step` under ``torch.compile``, one per model (its sessions share the compiled graphs).

    If compilation fails (e.g. no C++ compiler for inductor), warns once and falls back to the eager forward.
    """
    step = getattr(model, "_personagpt_compiled_step", None)
    if step is not None:
        return step
    forward = eager_step(model)
    compiled = torch.compile(forward, fullgraph=True, dynamic=False)

    def step(token: torch.Tensor, cache: Cache) -> torch.Tensor:
        try:
            return compiled(token, cache)
        except Exception as error:  # any compiler failure: keep chatting, eagerly
            warnings.warn(f"torch.compile failed ({type(error).__name__}: {error}); decoding eagerly instead",
                          RuntimeWarning, stacklevel=2)
            model._personagpt_compiled_step = forward
            return forward(token, cache)

    model._personagpt_compiled_step = step
    return step


def shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two id sequences have in common."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def crop_to_prefix(cache: Cache, cached_ids: Sequence[int], ids: Sequence[int]) -> int:
    """Crop ``cache`` (holding ``cached_ids``) to the longest prefix it shares with ``ids``, keeping ``ids``' last
    token out (it must be fed to get next-token logits); returns how many tokens of ``ids`` are cached."""
    shared = min(shared_prefix(cached_ids, ids), len(ids) - 1)
    surplus = int(cache.get_seq_length()) - shared
    if surplus > 0:
        cache.crop(-surplus)
    return shared


class PrefixCache:
    """Finished sequences' keys/values (any value a backend keeps: a tensor, a llama.cpp sequence id), least
    recently used dropped first once over ``max_tokens``. Adding returns the values dropped, for the backend to
    free."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.entries: OrderedDict[tuple[int, ...], object] = OrderedDict()
        self.tokens = 0

    def longest(self, ids: Sequence[int], limit: int):
        """``(shared, kv)`` of the entry sharing the longest prefix with ``ids`` (at most ``limit`` tokens)."""
        best, best_key = 0, None
        for key in self.entries:
            n = shared_prefix(key, ids)
            if n > best:
                best, best_key = n, key
        if best_key is None:
            return 0, None
        self.entries.move_to_end(best_key)
        return min(best, limit), self.entries[best_key]

    def add(self, ids: Sequence[int], kv) -> list:
        """Keep ``kv`` for ``ids``; the values no longer kept (superseded, evicted, or ``kv`` itself if too long)."""
        key = tuple(ids)
        if not key or len(key) > self.max_tokens:
            return [kv]
        dropped = []
        for old in [k for k in self.entries if len(k) <= len(key) and key[: len(k)] == k]:
            self.tokens -= len(old)  # a prefix of the new entry (or the same sequence): superseded
            dropped.append(self.entries.pop(old))
        self.tokens += len(key)
        self.entries[key] = kv
        while self.tokens > self.max_tokens:
            dropped.append(self.pop_oldest())
        return dropped

    def pop_oldest(self):
        """Drop the least recently used entry; its value."""
        old, kv = self.entries.popitem(last=False)
        self.tokens -= len(old)
        return kv

    def clear(self) -> list:
        """Drop every entry; their values."""
        values = list(self.entries.values())
        self.entries.clear()
        self.tokens = 0
        return values
