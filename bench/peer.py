"""Ours against llama.cpp on the same CPU, the same export and the same prompt ids, one engine at a time.

    python bench/peer.py --llama-python /path/to/llama-venv/bin/python \\
        [--llama-server /path/to/llama-server] [--users 16] [--turns 8]

One user: an 8-turn Persona-Chat validation dialogue (the bot is its second speaker); at turn t the prompt is the
persona and the gold history up to the user's t-th message, and every engine decodes 64 tokens greedily from
those ids, keeping its KV cache between turns (so a later turn encodes only its new tokens). Reported: ms per
token (after the first) and time to first token at turns 1 and 8, for our reference path (transformers), our
fast path over fp32 weights and over int8 weights (the default on CPUs with fast bf16), and llama.cpp (through
llama-cpp-python, in a venv of its own) on the f16 and q8_0 GGUF exports.

Many users: ``--users`` concurrent conversations, each a different validation dialogue, ``--turns`` turns each,
64 tokens a turn, the same token ids to our server (``/v1/completions``) and to llama.cpp's HTTP server started
with one slot per user. Reported: aggregate generated tokens per second, p50/p95 turn latency, errors.

Each engine runs in its own process, one after another (two at once would share the 2 cores). Results:
bench/results/peer.json and a Markdown table on stdout; the CPU is named with them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
NEW_TOKENS = 64


def prompts_of(dialogue, fmt, turns: int) -> list[list[int]]:
    """The prompt ids before each of the bot's (speaker 2's) first ``turns`` replies."""
    from personagpt.generate.conversation import fit_context

    prefix = fmt.persona_prefix(dialogue.facts(2))
    return [fit_context(prefix, [fmt.utterance(u) for u in dialogue.turns[: 2 * t + 1]], 1024 - NEW_TOKENS)
            for t in range(turns)]


def ours_single(mode: str, prompts: list[list[int]]) -> dict:
    """Our session loop (what ``interact`` runs) on the prompts, decoding through ``mode``'s path."""
    import torch

    from personagpt.models.fastpath import fast_decoder
    from personagpt.generate.conversation import decode_tokens
    from personagpt.generate.kvcache import ReservedCache, crop_to_prefix
    from personagpt.models.load import load_chat_model
    from personagpt.generate.sampling import SamplingConfig

    torch.set_num_threads(2)
    model, fmt = load_chat_model(None)
    model.eval()
    decoder = fast_decoder(model, mode)
    cfg = SamplingConfig(do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
    cache, cached, turns = ReservedCache(), [], []
    for ids in [prompts[0]] + prompts:  # the first pass warms up (allocations, kernels); not reported
        started = time.perf_counter()
        shared = crop_to_prefix(cache, cached, ids)
        tokens, first = [], None
        for token in decode_tokens(decoder, cache, ids, shared, cfg, fmt):
            first = first or time.perf_counter()
            tokens.append(token)
        done = time.perf_counter()
        cached = (ids + tokens)[: int(cache.get_seq_length())]
        turns.append({"prompt_tokens": len(ids), "ttft_ms": 1000 * (first - started),
                      "ms_per_token": 1000 * (done - first) / (len(tokens) - 1), "tokens": tokens})
        if len(turns) == 1:
            cache, cached = ReservedCache(), []
    return {"engine": f"ours ({mode})", "turns": turns[1:]}


def ours_engine(prompts: list[list[int]]) -> dict:
    """What ``interact`` runs where llama-cpp-python is installed: the terminal's own engine (llama.cpp backend,
    chosen automatically), each turn a request whose prompt reuses the engine's prefix cache."""
    import torch

    from personagpt.cli.common import terminal_engine
    from personagpt.generate.sampling import SamplingConfig
    from personagpt.models.load import load_chat_model

    torch.set_num_threads(2)
    model, fmt = load_chat_model(None)
    cfg = SamplingConfig(do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
    engine = terminal_engine(model, fmt, cfg, 1024)
    if engine is None:
        raise SystemExit("the terminal has no engine here: llama-cpp-python is not installed")
    turns = []
    for ids in [prompts[0][::-1]] + prompts:  # the first pass warms up (no prefix in common); not reported
        started = time.perf_counter()
        tokens, first = [], None
        for token in engine.submit(ids, cfg):
            first = first or time.perf_counter()
            tokens.append(token)
        done = time.perf_counter()
        turns.append({"prompt_tokens": len(ids), "ttft_ms": 1000 * (first - started),
                      "ms_per_token": 1000 * (done - first) / (len(tokens) - 1), "tokens": tokens})
    engine.close()
    return {"engine": f"ours (engine: {engine.describe()})", "turns": turns[1:]}


def chat_body(dialogue, turn: int, goal: str | None) -> dict:
    """The chat request a client sends before the bot's ``turn``-th reply: the persona as a system message, the
    gold history, our default sampling (answer rule, guidance), and in goal mode a goal (a guide row per user)."""
    messages = [{"role": "system", "content": "\n".join(dialogue.facts(2))}]
    for i, text in enumerate(dialogue.turns[: 2 * turn + 1]):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    body = {"messages": messages, "max_tokens": NEW_TOKENS, "min_tokens": NEW_TOKENS}
    return {**body, "goal": goal} if goal else body


def run_worker(args: list[str], python: str = sys.executable) -> dict:
    with tempfile.NamedTemporaryFile("r", suffix=".json") as out:
        subprocess.run([python, *args, out.name], check=True)
        return json.load(open(out.name))


def load_many(url: str, body_of, prompts_per_user: list[list[list[int]]]) -> dict:
    """Every user's turns in order, all users at once; aggregate tokens/s and turn latencies."""
    import httpx

    latencies, tokens, errors = [], [0], [0]
    lock = threading.Lock()

    def user(prompts):
        with httpx.Client(timeout=600) as client:
            for ids in prompts:
                started = time.perf_counter()
                try:
                    response = client.post(url, json=body_of(ids))
                    response.raise_for_status()
                    n = response.json()["usage"]["completion_tokens"] if "usage" in response.json() else \
                        response.json()["tokens_predicted"]
                except Exception:  # counted, the run goes on
                    with lock:
                        errors[0] += 1
                    continue
                with lock:
                    latencies.append(time.perf_counter() - started)
                    tokens[0] += n

    started = time.perf_counter()
    with ThreadPoolExecutor(len(prompts_per_user)) as pool:
        list(pool.map(user, prompts_per_user))
    wall = time.perf_counter() - started
    latencies.sort()
    return {"users": len(prompts_per_user), "turns": sum(map(len, prompts_per_user)), "tokens": tokens[0],
            "seconds": round(wall, 2), "tokens_per_second": round(tokens[0] / wall, 1), "errors": errors[0],
            "p50_turn_s": round(statistics.median(latencies), 3) if latencies else None,
            "p95_turn_s": round(latencies[int(0.95 * (len(latencies) - 1))], 3) if latencies else None}


def wait_ready(url: str, process, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode})")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the server did not come up")


def serve_and_load(command: list[str], health: str, url: str, body_of, prompts_per_user, env=None) -> dict:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_ready(health, process)
        load_many(url, body_of, [p[:1] for p in prompts_per_user[:2]])  # warm-up
        return load_many(url, body_of, prompts_per_user)
    finally:
        process.terminate()
        process.wait(timeout=60)


def cpu_name() -> str:
    from personagpt.models.hardware import describe_hardware

    return describe_hardware()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-python", help="Python of a venv with llama-cpp-python (skipped without it).")
    parser.add_argument("--llama-server", help="llama.cpp's llama-server binary (the many-users run; skipped "
                                               "without it).")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--exports", type=Path, default=Path("runs/peer"), help="Where the GGUF exports go.")
    parser.add_argument("--skip-single", action="store_true")
    parser.add_argument("--skip-many", action="store_true")
    parser.add_argument("--modes", nargs="+", default=["off", "fp32", "int8", "engine"],
                        choices=["off", "fp32", "int8", "engine"],
                        help="Our single-user paths: torch's reference, fast fp32 and int8 loops, and the terminal's "
                             "engine (llama.cpp where installed).")
    parser.add_argument("--backends", nargs="+", default=["auto", "torch"],
                        help="Our server's backends for the many-users run (auto: llama.cpp where installed).")
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "PROMPTS"), help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.worker:  # a child process: one of our modes
        mode, prompts = args.worker
        prompts = json.load(open(prompts))["prompts"]
        json.dump(ours_engine(prompts) if mode == "engine" else ours_single(mode, prompts), open(rest[0], "w"))
        return

    from personagpt.data.dialogues import default_data_dir, load_dialogues
    from personagpt.models.export import export_gguf
    from personagpt.models.load import load_chat_model

    model, fmt = load_chat_model(None)
    dialogues = [d for d in load_dialogues(default_data_dir() / "personachat" / "valid_both_original_no_cands.txt")
                 if len(d.turns) >= 2 * args.turns]
    single = prompts_of(dialogues[0], fmt, 8)
    args.exports.mkdir(parents=True, exist_ok=True)
    ggufs = {}
    for dtype in ("f16", "q8_0"):
        path = args.exports / f"personagpt-{dtype}.gguf"
        if not path.exists():
            export_gguf(model, fmt, path, dtype)
        ggufs[dtype] = path
    result = {"cpu": cpu_name(), "new_tokens": NEW_TOKENS, "single": [], "many": []}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"prompts": single, "new_tokens": NEW_TOKENS}, f)
        prompts_file = f.name
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"prompts": single, "new_tokens": NEW_TOKENS, "no_repack": True}, f)
        no_repack_file = f.name
    if not args.skip_single:
        from personagpt.generate.llamacpp import unavailable

        modes = [m for m in args.modes if m != "engine" or not unavailable(model)]
        for mode in modes:
            result["single"].append(run_worker([__file__, "--worker", mode, prompts_file]))
            print(summary(result["single"][-1]), flush=True)
        if args.llama_python:
            for dtype, path in ggufs.items():
                for repack, spec in ((True, prompts_file), (False, no_repack_file)):
                    try:
                        row = run_worker([str(HERE / "peer_llama.py"), str(path), spec], args.llama_python)
                    except subprocess.CalledProcessError as error:  # the q8_0 export's crash (issue 28)
                        print(f"llama.cpp {dtype}: the process failed ({error.returncode})", flush=True)
                        result["failed"] = result.get("failed", []) + [f"llama.cpp {dtype}: exit {error.returncode}"]
                        continue  # then without repacking
                    row["engine"] = f"llama.cpp {dtype}" + ("" if repack else " (--no-repack)")
                    result["single"].append(row)
                    print(summary(row), flush=True)
                    break
    del model
    users = dialogues[1:1 + args.users]
    per_user = [prompts_of(d, fmt, args.turns) for d in users]
    port = 8765
    server = [sys.executable, "-m", "personagpt.cli", "serve", "--port", str(port), "--quiet"]
    health, completions = f"http://127.0.0.1:{port}/health", f"http://127.0.0.1:{port}/v1/completions"
    # the same ids as llama-server, greedy; then what chat clients get: default sampling, persona chat and goal
    # mode (each user's guide row beside its own: twice the rows), requests built from the same dialogues
    variants = [("ids, greedy", completions, lambda ids: {"prompt": ids, "max_tokens": NEW_TOKENS,
                                                             "min_tokens": NEW_TOKENS, "temperature": 0}, per_user),
                ("chat defaults, persona", f"http://127.0.0.1:{port}/v1/chat/completions", lambda body: body,
                 [[chat_body(d, t, None) for t in range(args.turns)] for d in users]),
                ("chat defaults, goal mode (guide rows)", f"http://127.0.0.1:{port}/v1/chat/completions",
                 lambda body: body, [[chat_body(d, t, "talk about hobbies.") for t in range(args.turns)]
                                     for d in users])]
    for backend in ([] if args.skip_many else args.backends):
        for name, url, body_of, work in variants:
            rows = args.users * (2 if "guide" in name else 1)
            env = {**os.environ, "PERSONAGPT_BACKEND": backend}
            ours = serve_and_load(server + ["--max-batch", str(rows)], health, url, body_of, work, env=env)
            result["many"].append({"engine": f"ours (server, {backend}; {name})", **ours})
            print(result["many"][-1], flush=True)
    if args.llama_server and not args.skip_many:
        for dtype, path in ggufs.items():
            command = [args.llama_server, "-m", str(path), "--port", str(port), "-np", str(args.users), "-c",
                       str(1024 * args.users), "-t", "2", "-tb", "2", "--no-webui"]
            for extra in ([], ["--no-repack"]):
                try:
                    many = serve_and_load(command + extra, f"http://127.0.0.1:{port}/health",
                                          f"http://127.0.0.1:{port}/completion",
                                          lambda ids: {"prompt": ids, "n_predict": NEW_TOKENS, "ignore_eos": True,
                                                       "temperature": 0, "cache_prompt": True}, per_user)
                except RuntimeError as error:  # the q8_0 export's crash (issue 28): then without repacking
                    print(f"llama.cpp server {dtype}: {error}", flush=True)
                    result["failed"] = result.get("failed", []) + [f"llama.cpp server {dtype}: {error}"]
                    continue
                result["many"].append({"engine": f"llama.cpp server {dtype} {' '.join(extra)} ({args.users} slots)",
                                       **many})
                print(result["many"][-1], flush=True)
                break
    for row in result["single"]:
        for turn in row["turns"]:
            turn.pop("tokens", None)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "peer.json").write_text(json.dumps(result, indent=1))
    print(table(result))


def summary(row: dict) -> str:
    t1, t8 = row["turns"][0], row["turns"][-1]
    return (f"{row['engine']}: turn 1 {t1['ms_per_token']:.1f} ms/token, TTFT {t1['ttft_ms']:.0f} ms; "
            f"turn {len(row['turns'])} {t8['ms_per_token']:.1f} ms/token, TTFT {t8['ttft_ms']:.0f} ms")


def table(result: dict) -> str:
    lines = [f"CPU: {result['cpu']}", "", "| engine | ms/token turn 1 | TTFT turn 1 | ms/token turn 8 | TTFT turn 8 |",
             "|---|---:|---:|---:|---:|"]
    for row in result["single"]:
        t1, t8 = row["turns"][0], row["turns"][-1]
        lines.append(f"| {row['engine']} | {t1['ms_per_token']:.1f} | {t1['ttft_ms']:.0f} ms | "
                     f"{t8['ms_per_token']:.1f} | {t8['ttft_ms']:.0f} ms |")
    lines += ["", "| engine | users | tokens/s | p50 turn | p95 turn | errors |", "|---|---:|---:|---:|---:|---:|"]
    for row in result["many"]:
        lines.append(f"| {row['engine']} | {row['users']} | {row['tokens_per_second']} | {row['p50_turn_s']} s | "
                     f"{row['p95_turn_s']} s | {row['errors']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
