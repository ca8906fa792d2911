"""llama.cpp's half of bench/peer.py, run with the Python of a venv that has llama-cpp-python (and not torch).

    LLAMA_PYTHON bench/peer_llama.py MODEL.gguf PROMPTS.json OUT.json

For each prompt (the same token ids bench/peer.py gives our engine): greedy decoding of NEW tokens; the time to
the first token (prompt evaluation, reusing the longest prefix already in the KV cache, as llama-cpp-python does
between calls) and milliseconds per later token.
"""

import json
import sys
import time

from llama_cpp import Llama


def without_repacking() -> None:
    """llama.cpp's default with its extra (repacked) CPU weight layouts off, as ``llama-server --no-repack``: the
    q8_0 export dies with an illegal instruction in those kernels on this VM and runs without them."""
    import llama_cpp.llama_cpp as low

    default = low.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    low.llama_model_default_params = params


def main(model: str, prompts_path: str, out: str) -> None:
    spec = json.load(open(prompts_path))
    if spec.get("no_repack"):
        without_repacking()
    llm = Llama(model_path=model, n_ctx=2048, n_threads=spec.get("threads", 2), n_batch=512, verbose=False, seed=0)
    turns = []
    for prompt in spec["prompts"]:
        started = time.perf_counter()
        tokens, first = [], None
        for token in llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0):  # never stops on its own
            if first is None:
                first = time.perf_counter()
            tokens.append(token)
            if len(tokens) == spec["new_tokens"]:
                break
        done = time.perf_counter()
        turns.append({"prompt_tokens": len(prompt), "ttft_ms": 1000 * (first - started),
                      "ms_per_token": 1000 * (done - first) / (len(tokens) - 1), "tokens": tokens})
    json.dump({"engine": "llama.cpp (llama-cpp-python)", "model": model, "turns": turns}, open(out, "w"))


if __name__ == "__main__":
    main(*sys.argv[1:4])
