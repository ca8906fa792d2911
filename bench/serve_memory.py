"""The server's memory under load: peak RSS with 16 users, and RSS over a long run of new conversations.

    python bench/serve_memory.py [--requests 1200] [--concurrency 8] [--users 16]

Starts ``personagpt serve`` (the bundled model, default settings), then
1. ``--users`` concurrent conversations of 8 turns (64-token replies): the peak RSS (VmHWM);
2. ``--requests`` single-turn requests, ``--concurrency`` at a time, each a new conversation with a random
   persona from the packaged list: RSS after every 10% of them (flat after warm-up is the aim).
Writes bench/results/serve_memory.json.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent


def memory(pid: int) -> dict:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"rss_mb": int(fields["VmRSS"].split()[0]) // 1024, "peak_mb": int(fields["VmHWM"].split()[0]) // 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--port", type=int, default=8777)
    args = parser.parse_args()
    from personagpt.data.dialogues import PACKAGED_PERSONAS, load_personas
    from personagpt.models.hardware import describe_hardware

    personas = load_personas(PACKAGED_PERSONAS)
    url = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen([sys.executable, "-m", "personagpt.cli", "serve", "--port", str(args.port), "--quiet"],
                              stderr=subprocess.DEVNULL)
    result = {"hardware": describe_hardware()}
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        result["health"] = httpx.get(url + "/health").json()
        result["loaded"] = memory(server.pid)
        errors = [0]

        def turn(client, persona, messages, tokens):
            response = client.post(url + "/v1/chat/completions", timeout=600, json={
                "messages": [{"role": "system", "content": "\n".join(persona)}, *messages], "max_tokens": tokens})
            if response.status_code != 200:
                errors[0] += 1
                return "ok ."
            return response.json()["choices"][0]["message"]["content"] or "ok ."

        def conversation(seed):
            rng = random.Random(seed)
            persona, messages = rng.choice(personas), []
            with httpx.Client() as client:
                for question in ["hi , how are you ?", "what do you do for a living ?", "do you have pets ?",
                                 "what do you like to do for fun ?", "where do you live ?", "any kids ?",
                                 "what music do you like ?", "nice talking to you !"]:
                    messages.append({"role": "user", "content": question})
                    messages.append({"role": "assistant", "content": turn(client, persona, messages, 64)})

        started = time.perf_counter()
        threads = [threading.Thread(target=conversation, args=(i,)) for i in range(args.users)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        result["users"] = {"users": args.users, "turns": 8, "seconds": round(time.perf_counter() - started, 1),
                           "errors": errors[0], **memory(server.pid)}
        print(result["users"], flush=True)

        samples, done = [], [0]
        lock = threading.Lock()

        def one(i):
            rng = random.Random(10_000 + i)
            with httpx.Client() as client:
                turn(client, rng.choice(personas), [{"role": "user", "content": "hi ! tell me about yourself ."}],
                     32)
            with lock:
                done[0] += 1
                if done[0] % max(1, args.requests // 10) == 0:
                    samples.append({"requests": done[0], **memory(server.pid)})
                    print(samples[-1], flush=True)

        started = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(one, range(args.requests)))
        result["soak"] = {"requests": args.requests, "concurrency": args.concurrency, "errors": errors[0],
                          "seconds": round(time.perf_counter() - started, 1), "samples": samples}
    finally:
        server.terminate()
        server.wait(timeout=60)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "serve_memory.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
