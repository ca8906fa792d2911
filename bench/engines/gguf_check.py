"""Every GGUF export in a real llama.cpp: load, greedy tokens for the same prompt ids as ours, agreement.

llama.cpp is too long to build in CI (about 20 minutes on 2 cores), so this is a bench check. Install, as run here:

    python -m venv L && L/bin/pip install llama-cpp-python          # compiles llama.cpp (or, with llama.cpp built
                                                                     # already: CMAKE_ARGS=-DLLAMA_BUILD=OFF and
                                                                     # LLAMA_CPP_LIB_PATH=its build/bin)
    python bench/engines/gguf_check.py --llama-python L/bin/python

For each dtype (f32, f16, bf16, q8_0) the script exports the bundled model (``personagpt export --format gguf``),
then a child process in the llama.cpp venv loads the file and decodes greedily from our prompt ids (5 validation
personas with their first user turn, and a goal prompt), 16 tokens each. Ours: the reference forward in fp32. Each
dtype runs in its own process, so a crash is reported as such (its signal) instead of ending the check, and is run
again without llama.cpp's extra buffer types (``--no-repack`` in its server: no repacked or AMX kernels), the
workaround for CPUs whose AMX llama.cpp uses for quantized weights. Agreement: equal replies and leading tokens in
common. Results: bench/results/gguf_check.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

from personagpt.data.dialogues import load_dialogues
from personagpt.models.export import export_gguf
from personagpt.generate.conversation import Conversation, SamplingConfig
from personagpt.generate.kvcache import shared_prefix
from personagpt.models.load import load_chat_model
from personagpt.models.hardware import describe_hardware

DATA = Path(os.environ.get("PERSONAGPT_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
DTYPES = ("f32", "f16", "bf16", "q8_0")
TOKENS = 16

CHILD = r"""
import json, sys
import llama_cpp.llama_cpp as low
from llama_cpp import Llama
job = json.load(sys.stdin)
sys.path.insert(0, job["bench"])
from peer_llama import without_repacking  # what llama-server's --no-repack does: no repacked or AMX kernels
if job["no_repack"]:
    without_repacking()
llm = Llama(model_path=job["path"], n_ctx=1024, n_threads=2, verbose=False, seed=0, n_batch=512)
out = []
for prompt in job["prompts"]:
    llm.reset()
    tokens = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        if token == job["eos"] or len(tokens) >= job["tokens"]:
            break
        tokens.append(token)
    out.append(tokens)
print(json.dumps({"replies": out, "vocab": llm.n_vocab(), "system": low.llama_print_system_info().decode()}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-python", required=True, help="Python of the venv with llama-cpp-python")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    parser.add_argument("--out", type=Path, default=Path("bench/results/gguf_check.json"))
    args = parser.parse_args()

    os.environ["PERSONAGPT_FAST_PATH"] = "off"
    model, fmt = load_chat_model(None)
    greedy = SamplingConfig(do_sample=False, max_new_tokens=TOKENS)
    dialogues = load_dialogues(DATA / "personachat" / "valid_both_original_no_cands.txt")[:5]
    conversations = [Conversation.from_turns(model, fmt, [d.turns[0]], persona=d.p2_facts, sampling=greedy)
                     for d in dialogues]
    conversations.append(Conversation.from_turns(model, fmt, ["hello ! how are you ?"], goal="ask about kids.",
                                                 sampling=greedy))
    prompts = [c.context_ids(TOKENS) for c in conversations]
    ours = []
    for c in conversations:
        c.respond()
        ours.append([t for t in c.turn_ids[-1] if t != fmt.eos_id])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in args.dtypes:
            path = export_gguf(model, fmt, Path(tmp) / f"personagpt-{dtype}.gguf", dtype)
            row = {"dtype": dtype, "size_mb": round(path.stat().st_size / 2 ** 20, 1)}
            for no_repack in (False, True):
                job = json.dumps({"path": str(path), "prompts": prompts, "eos": fmt.eos_id, "tokens": TOKENS,
                                  "no_repack": no_repack, "bench": str(Path(__file__).resolve().parents[1])})
                child = subprocess.run([args.llama_python, "-c", CHILD], input=job, capture_output=True, text=True,
                                       timeout=900)
                row["exit" if not no_repack else "exit_no_repack"] = child.returncode
                if child.returncode == 0:
                    break
                row["error"] = child.stderr.strip().splitlines()[-3:] if child.stderr.strip() else []
                print(json.dumps(row), flush=True)
            if child.returncode != 0:
                rows.append(row)
                continue
            answer = json.loads(child.stdout.strip().splitlines()[-1])
            theirs, row["llama_cpp_system"] = answer["replies"], answer["system"]
            row["cases"] = [{"ours": fmt.decode(a), "llama.cpp": fmt.decode(b), "equal": a == b,
                             "leading_tokens_equal": shared_prefix(a, b), "tokens": len(a)}
                            for a, b in zip(ours, theirs)]
            row["equal"] = sum(c["equal"] for c in row["cases"])
            row["leading_tokens_equal"] = sum(c["leading_tokens_equal"] for c in row["cases"])
            row["tokens"] = sum(c["tokens"] for c in row["cases"])
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "cases"}), flush=True)
    result = {"cpu": describe_hardware(), "ours": "reference forward, fp32, greedy", "tokens": TOKENS, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"CPU: {result['cpu']}")
    print(f"llama.cpp: {next((r['llama_cpp_system'] for r in rows if 'llama_cpp_system' in r), '?')}")
    print("| GGUF dtype | size (MB) | loads and runs | replies equal to ours | leading tokens equal |")
    print("|---|---:|---|---:|---:|")
    for r in rows:
        runs = ("yes" if not r["exit"] else f"only with --no-repack (exit {r['exit']} without)"
                if not r.get("exit_no_repack", 1) else f"no (exit {r['exit']}, {r.get('exit_no_repack')})")
        if "cases" not in r:
            print(f"| {r['dtype']} | {r['size_mb']} | {runs} | - | - |")
        else:
            print(f"| {r['dtype']} | {r['size_mb']} | {runs} | {r['equal']}/{len(r['cases'])} | "
                  f"{r['leading_tokens_equal']}/{r['tokens']} |")


if __name__ == "__main__":
    main()
