"""The engine's llama.cpp backend: llama.cpp's batched decode runs the model; sampling, guidance, best-of-N and
logprobs stay ours (:mod:`personagpt.generate.engine` samples every row from the logits this returns).

On the project's CPUs llama.cpp's q8_0 kernels decode a token about twice as fast as torch's int8 products
(docs/performance.md). The model is exported once to a q8_0 GGUF (:func:`~personagpt.models.export.export_gguf`),
kept under the cache directory by a hash of its weights, and loaded into one llama.cpp context in which every
engine slot and every prefix-cache entry is a llama.cpp sequence with keys/values of its own.

llama-cpp-python is an optional extra (``CMAKE_ARGS=-DGGML_OPENMP=OFF pip install 'personagpt[llamacpp]'``; it
compiles llama.cpp, 10-40 minutes on 2 cores; without OpenMP, because an OpenMP build shares torch's libgomp in our
process and decodes slower); without it the engine runs on torch.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from personagpt.errors import PersonaGPTError
from personagpt.format import PromptFormat
from personagpt.generate.kvcache import PrefixCache
from personagpt.models.fastpath import choose_fast_path, fast_decoder, supported
from personagpt.models.hardware import cpu_flags

WEIGHTS = "q8_0"  # llama.cpp's int8-class weights: the precision torch's int8 path has
_CACHE_SEQUENCES = 64  # prefix-cache entries kept as llama.cpp sequences at most (each holds `capacity` cells)
_MAX_SEQUENCES = 256  # llama.cpp's LLAMA_MAX_SEQ


def unavailable(model, rows: int = 1) -> str | None:
    """Why the llama.cpp backend cannot run ``model`` in ``rows`` slots here, or None when it can."""
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed"
    if rows > _MAX_SEQUENCES:
        return f"llama.cpp decodes at most {_MAX_SEQUENCES} sequences together, not {rows}"
    if not supported(model):  # the same plain llama- and gpt2-type models the fast path and the GGUF export take
        return "the model does not export to GGUF (a plain llama- or gpt2-type model does)"
    if model.device.type != "cpu":
        return f"the model is on {model.device.type}"
    return None


def weights_digest(model) -> str:
    """A hash of the model's weights and configuration: the name of its cached GGUF export."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(model.config.to_json_string().encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def default_weights() -> str:
    """The GGUF precision the backend decodes with: ``$PERSONAGPT_LLAMACPP_WEIGHTS``, else q8_0."""
    return os.environ.get("PERSONAGPT_LLAMACPP_WEIGHTS") or WEIGHTS


def cached_gguf(model, fmt: PromptFormat, weights: str | None = None) -> Path:
    """The model's GGUF export in ``weights`` precision, written once per model under the cache directory, and
    remembered on the model: a server exports the weights as loaded, before it converts them to bf16 for scoring."""
    from personagpt.models.export import export_gguf
    from personagpt.models.load import cache_dir

    weights = weights or default_weights()
    exports = model.__dict__.setdefault("_personagpt_gguf", {})
    if weights in exports:
        return exports[weights]
    path = cache_dir() / "gguf" / f"{weights_digest(model)}-{weights}.gguf"
    if not path.exists():
        print(f"Converting the model for llama.cpp, once: {path}", file=sys.stderr, flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.gguf")
        export_gguf(model, fmt, partial, weights)
        partial.replace(path)  # a crash mid-export leaves no half-written file under the final name
    exports[weights] = path
    return path


_log_callback = None  # kept alive: llama.cpp calls it for every log line


def _quiet(llama) -> None:
    """llama.cpp logs every tensor it loads on stderr; keep its errors only."""
    global _log_callback
    if _log_callback is None:
        def log(level, text, _):
            if level == 4:  # GGML_LOG_LEVEL_ERROR
                print(text.decode(errors="replace"), end="", flush=True)
        _log_callback = llama.llama_log_callback(log)
        llama.llama_log_set(_log_callback, ctypes.c_void_p(0))


class LlamaCppSlots:
    """Engine slots and prefix-cache entries as llama.cpp sequences, each in a KV stream of its own.

    Each sequence has its own ``capacity`` cells (llama.cpp's non-unified cache), so a decoding row attends over its
    own tokens only; in a unified cache every row's attention spans every cell in use (16 users' steps at 400
    tokens: 72-76 ms against 54-59). Slot i is sequence i: llama.cpp decodes the sequences of one batch together
    only when their ids are consecutive, as the engine's active slots are. Cache entries are the sequences after
    the slots. Reusing, copying, retiring and moving copy whole streams (all llama.cpp copies between streams) and
    cut them to length.
    """

    name = "llama.cpp"

    def __init__(self, model, fmt: PromptFormat, max_batch: int, capacity: int, prefix_cache_tokens: int,
                 weights: str | None = None) -> None:
        import llama_cpp as llama

        self._llama = llama
        _quiet(llama)
        llama.llama_backend_init()
        self.fmt, self.max_batch, self.capacity = fmt, max_batch, capacity
        self.weights = weights or default_weights()
        # one cached conversation per slot row fits a full server's users and their guide rows
        self.cache_sequences = min(_CACHE_SEQUENCES, max(4, max_batch), _MAX_SEQUENCES - max_batch)
        self.fast_path = choose_fast_path(None, model)  # what the model's other work (scoring) runs on
        self.decoder = fast_decoder(model, self.fast_path.mode)
        self.path = cached_gguf(model, fmt, self.weights)
        model_params = llama.llama_model_default_params()
        # on AMX CPUs llama.cpp's repacked q8_0 kernels died with an illegal instruction (bench/README.md, "The q8_0
        # crash"); a crash would take the server down, so there the weights stay in their plain layout
        self.repacked = "amx_int8" not in cpu_flags()
        # llama.cpp built with OpenMP binds to the libgomp torch loaded first and shares its runtime; decoding from
        # the engine's thread then ran 25-45% slower per token than from the main thread (docs/performance.md)
        self.openmp = b"OPENMP = 1" in llama.llama_print_system_info()
        model_params.use_extra_bufts = self.repacked
        self._model = llama.llama_model_load_from_file(str(self.path).encode(), model_params)
        if not self._model:
            raise PersonaGPTError(f"llama.cpp could not load {self.path}")
        sequences = max_batch + self.cache_sequences
        params = llama.llama_context_default_params()
        params.n_seq_max = sequences
        params.n_ctx = sequences * -(-capacity // 256) * 256  # llama.cpp pads each stream to 256 cells
        self.batch_tokens = params.n_batch = params.n_ubatch = 512
        self._torch_threads = torch.get_num_threads()
        params.n_threads = params.n_threads_batch = self._torch_threads
        params.kv_unified = False
        params.no_perf = True
        self._context = llama.llama_init_from_model(self._model, params)
        if not self._context:
            llama.llama_model_free(self._model)
            raise PersonaGPTError("llama.cpp could not create a context "
                                  f"({sequences} sequences of {capacity} tokens)")
        # llama.cpp gets the cores; torch's own work (sampling, scoring) runs on one thread: torch's idle workers
        # spin after each operation and took a core from llama.cpp's (an OpenMP build, 16 users: 176 tokens/s, 254
        # with torch on one); restored on close
        torch.set_num_threads(1)
        self._memory = llama.llama_get_memory(self._context)
        self.vocab = llama.llama_vocab_n_tokens(llama.llama_model_get_vocab(self._model))
        self._width = model.get_output_embeddings().weight.shape[0]  # the torch model's logits (may be padded)
        self._batch = llama.llama_batch_init(self.batch_tokens, 0, 1)
        # logits land here, one row per slot at most (a step's rows; a prefill's last tokens)
        self._logits = torch.full((max_batch, self._width), float("-inf"))
        self.prefix_cache = PrefixCache(prefix_cache_tokens)
        self._free = list(range(max_batch, sequences))  # cache sequences holding nothing

    def describe(self) -> str:
        openmp = ", built with OpenMP: slower beside torch, rebuild with CMAKE_ARGS=-DGGML_OPENMP=OFF"
        layout = ("" if self.repacked else ", not repacked (AMX)") + (openmp if self.openmp else "")
        return (f"llama.cpp, {self.weights} weights{layout}, {self._torch_threads} threads; torch's own work on one "
                f"({self.path.name})")

    def close(self) -> None:
        if self._context:
            self._llama.llama_batch_free(self._batch)
            self._llama.llama_free(self._context)
            self._llama.llama_model_free(self._model)
            self._context = None
            torch.set_num_threads(self._torch_threads)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may be gone
            pass

    # ---- the slots interface ------------------------------------------------------------------------------------

    def reuse(self, slot: int, prompt: Sequence[int]) -> int:
        shared, entry = self.prefix_cache.longest(prompt, len(prompt) - 1)
        self._copy(entry, slot, shared)
        return shared

    def forward(self, first: int, chunks: Sequence[Sequence[int]], starts: Sequence[int]) -> torch.Tensor:
        """The logits after each chunk, in a buffer the next forward reuses (the engine samples them first)."""
        # a slot holds cells below ``starts[b]`` only: reuse and copy cut a slot's sequence where it is filled
        feed = [(token, start + i, first + b, i == len(chunk) - 1)
                for b, (chunk, start) in enumerate(zip(chunks, starts)) for i, token in enumerate(chunk)]
        done = 0
        for at in range(0, len(feed), self.batch_tokens):
            done += self._decode(feed[at: at + self.batch_tokens], self._logits[done:])
        return self._logits[:done]

    def copy(self, source: int, target: int, length: int) -> None:
        self._copy(source, target, length)

    def retire(self, slot: int, sequence: Sequence[int]) -> None:
        if self.prefix_cache.max_tokens and self.cache_sequences and sequence:
            if not self._free:  # every cache sequence is taken: the least recently used entry goes
                self._release(self.prefix_cache.pop_oldest())
            entry = self._free.pop()
            self._copy(slot, entry, len(sequence))
            for dropped in self.prefix_cache.add(sequence, entry):
                self._release(dropped)
        self._clear(slot)

    def move(self, source: int, target: int, length: int) -> None:
        self._copy(source, target, length)
        self._clear(source)

    # ---- llama.cpp -----------------------------------------------------------------------------------------------

    def _clear(self, sequence: int) -> None:
        self._llama.llama_memory_seq_rm(self._memory, sequence, -1, -1)

    def _release(self, entry: int) -> None:
        self._clear(entry)
        self._free.append(entry)

    def _copy(self, source: int | None, target: int, length: int) -> None:
        """``target`` holds ``source``'s first ``length`` tokens (nothing when ``length`` is 0)."""
        self._clear(target)
        if length:
            self._llama.llama_memory_seq_cp(self._memory, source, target, -1, -1)  # whole streams only (applied in
            # order before the next decode, so a stream copied on is copied first)
            self._llama.llama_memory_seq_rm(self._memory, target, length, -1)

    def _decode(self, feed: list[tuple[int, int, int, bool]], out: torch.Tensor) -> int:
        """One llama_decode over ``(token, position, sequence, wants logits)``; the wanted rows' logits go to the
        first rows of ``out`` (copied straight from llama.cpp's buffer); how many."""
        batch = self._batch
        for i, (token, position, sequence, wanted) in enumerate(feed):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, position, 1
            batch.seq_id[i][0], batch.logits[i] = sequence, wanted
        batch.n_tokens = len(feed)
        status = self._llama.llama_decode(self._context, batch)
        if status != 0:
            raise PersonaGPTError(f"llama.cpp could not decode a batch of {len(feed)} tokens (status {status})")
        wanted = sum(1 for *_, w in feed if w)
        if wanted:
            pointer = self._llama.llama_get_logits(self._context)
            if self._width == self.vocab:
                ctypes.memmove(out.data_ptr(), pointer, wanted * self.vocab * 4)
            else:  # the torch head's padded rows stay -inf: never sampled
                source = np.ctypeslib.as_array(pointer, shape=(wanted, self.vocab))
                out[:wanted, : self.vocab] = torch.from_numpy(source)
        return wanted
