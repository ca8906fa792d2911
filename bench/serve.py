"""Load test of ``personagpt serve`` on loopback: simulated users chatting, batching on against batching off.

Each simulated user holds an 8-turn chat (the user turns of a validation dialogue, a persona of the same
dialogue) and streams every reply, of a fixed length (``min_tokens`` = ``max_tokens``), resending the whole
history each turn as OpenAI clients do. Per configuration: p50/p95 time to first token (TTFT) and turn latency
at turn 1 and turn 8, aggregate generated tokens/s over the wall time, errors, and the server's peak RSS.

The server runs in its own process (``personagpt serve``, one per batching mode); the users are threads here.
Before the servers start, one decoding step's memory-bandwidth floor is estimated: bytes of weights read per
token / measured copy bandwidth.

    python bench/serve.py [--users 1 4 16] [--turns 8] [--tokens 16] [--model NAME] [--candidates 1 4]
        [--batched-only]

``--candidates`` runs the load once per value (the request's best-of-N; 0: the field left out, so the server's
default applies: best of 4 while the batch has room for the 4 rows, else one sample).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PERSONAGPT_DATA", REPO.parent / "shared" / "data"))


def bandwidth_floor(model_name: str | None) -> dict:
    """Weights bytes per token (bf16 where the server would use it) and the machine's copy bandwidth."""
    import torch

    from personagpt.models.load import load_chat_model
    from personagpt.models.precision import serving_model

    model, _ = load_chat_model(model_name)
    model = serving_model(model)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    del model
    src = torch.empty(256 * 2**20, dtype=torch.uint8).fill_(1)
    dst = torch.empty_like(src)
    dst.copy_(src)
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        dst.copy_(src)
        runs.append(time.perf_counter() - started)
    copy_gbs = 2 * src.numel() / min(runs) / 1e9  # read + write
    return {"weights_mb": weights / 1e6, "copy_gb_s": copy_gbs, "floor_ms": 1000 * weights / (copy_gbs * 1e9 / 2)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str | None, max_batch: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "personagpt.cli", "serve", "--port", str(port), "--max-batch", str(max_batch),
           "--max-queue", "64"] + (["--model", model] if model else [])
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health").status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the server did not come up")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def user(url: str, persona: list[str], user_turns: list[str], tokens: int, results: list, errors: list,
         candidates: int = 1) -> None:
    messages = [{"role": "system", "content": "\n".join(persona)}]
    with httpx.Client(timeout=600) as client:
        for turn, text in enumerate(user_turns, 1):
            messages.append({"role": "user", "content": text})
            started = time.perf_counter()
            first, reply, count = None, "", 0
            try:
                with client.stream("POST", url + "/v1/chat/completions", json={
                        "messages": messages, "stream": True, "max_tokens": tokens, "min_tokens": tokens,
                        "seed": turn, **({"candidates": candidates} if candidates else {})}) as response:
                    if response.status_code != 200:
                        errors.append(response.status_code)
                        return
                    for line in response.iter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        chunk = json.loads(line[6:])
                        piece = chunk["choices"][0]["delta"].get("content")
                        if piece and first is None:
                            first = time.perf_counter() - started
                        reply += piece or ""
                        if "usage" in chunk:
                            count = chunk["usage"]["completion_tokens"]
            except httpx.HTTPError as error:
                errors.append(repr(error))
                return
            results.append({"turn": turn, "ttft": first or 0.0, "latency": time.perf_counter() - started,
                            "tokens": count})
            messages.append({"role": "assistant", "content": reply})


def run_load(url: str, users: int, turns: int, tokens: int, dialogues, candidates: int = 1) -> dict:
    results, errors = [], []
    threads = [threading.Thread(target=user, args=(url, d.p2_facts or d.p1_facts, d.turns[0::2][:turns], tokens,
                                                   results, errors, candidates)) for d in dialogues[:users]]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started

    def pct(values, q):
        values = sorted(values)
        return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")

    row = {"users": users, "candidates": candidates, "wall_s": wall, "tok_s": sum(r["tokens"] for r in results) / wall, "errors": len(errors)}
    for turn in (1, turns):
        at = [r for r in results if r["turn"] == turn]
        row[f"ttft{turn}_p50"] = statistics.median(r["ttft"] for r in at) if at else float("nan")
        row[f"ttft{turn}_p95"] = pct([r["ttft"] for r in at], 0.95)
        row[f"turn{turn}_p50"] = statistics.median(r["latency"] for r in at) if at else float("nan")
        row[f"turn{turn}_p95"] = pct([r["latency"] for r in at], 0.95)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=16, help="tokens per reply (fixed)")
    parser.add_argument("--model", default=None, help="model to serve (default: the bundled one)")
    parser.add_argument("--candidates", type=int, nargs="+", default=[1], help="best-of-N per request")
    parser.add_argument("--batched-only", action="store_true", help="skip the max-batch 1 server")
    args = parser.parse_args()

    from personagpt.data.dialogues import load_dialogues

    dialogues = [d for d in load_dialogues(DATA / "personachat" / "valid_both_original_no_cands.txt")
                 if len(d.turns) >= 2 * args.turns][: max(args.users)]
    floor = bandwidth_floor(args.model)
    print(f"weights read per token: {floor['weights_mb']:.0f} MB; copy bandwidth {floor['copy_gb_s']:.1f} GB/s "
          f"(read+write); memory-bandwidth floor of one decoding step: {floor['floor_ms']:.1f} ms")
    rows = []
    servers = [("batched (max-batch 16)", 16)] + ([] if args.batched_only else [("unbatched (max-batch 1)", 1)])
    for label, max_batch in servers:
        proc, url = start_server(args.model, max_batch)
        try:
            for candidates, users in [(c, u) for c in args.candidates for u in args.users]:
                row = run_load(url, users, args.turns, args.tokens, dialogues, candidates)
                row["server"] = label + {1: "", 0: ", server default"}.get(candidates, f", best of {candidates}")
                rows.append(row)
                print(json.dumps(row), flush=True)
            rss = peak_rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        for row in rows:
            row.setdefault("rss_mb", rss)
    t = args.turns
    print(f"\n| server | users | tokens/s | TTFT t1 p50/p95 (s) | TTFT t{t} p50/p95 (s) | turn 1 p50/p95 (s) | "
          f"turn {t} p50/p95 (s) | errors | peak RSS (MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['server']} | {r['users']} | {r['tok_s']:.1f} | {r['ttft1_p50']:.2f} / {r['ttft1_p95']:.2f} | "
              f"{r[f'ttft{t}_p50']:.2f} / {r[f'ttft{t}_p95']:.2f} | {r['turn1_p50']:.2f} / {r['turn1_p95']:.2f} | "
              f"{r[f'turn{t}_p50']:.2f} / {r[f'turn{t}_p95']:.2f} | {r['errors']} | {r['rss_mb']:.0f} |")
    by = {(r["server"][:3], r["users"]): r for r in rows if r["candidates"] == 1}
    top = max(args.users)
    if ("bat", top) in by and ("unb", top) in by:
        print(f"\n{top} users: batched {by[('bat', top)]['tok_s']:.1f} tok/s vs unbatched "
              f"{by[('unb', top)]['tok_s']:.1f} ({by[('bat', top)]['tok_s'] / by[('unb', top)]['tok_s']:.2f}x; "
              f"target >= 4x); turn-{t} / turn-1 TTFT p50 (batched): "
              f"{by[('bat', top)][f'ttft{t}_p50'] / by[('bat', top)]['ttft1_p50']:.2f} (target <= 1.3)")
    one = by.get(("bat", 1))
    if one:
        per_token = (one["turn1_p50"] - one["ttft1_p50"]) / max(args.tokens - 1, 1) * 1000
        print(f"one user: {per_token:.1f} ms per token after the first (turn 1 p50), against the "
              f"{floor['floor_ms']:.1f} ms memory-bandwidth floor")


if __name__ == "__main__":
    main()
