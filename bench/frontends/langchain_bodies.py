"""What LangChain's ``ChatOpenAI`` sends to `personagpt serve`, recorded (and whether each got a 200).

Starts our server as users do, the recording proxy of ``open_webui.py`` in front of it, and runs LangChain from
another venv (``--client-venv``, with ``langchain-openai`` installed) against the proxy: a chat with a system prompt
and ``max_tokens=1024``, the same streamed, one with ``logprobs=True`` and ``n=2``, and one with the presence and
frequency penalties and stop strings SillyTavern-style presets set. The chat requests go to ``--out`` (JSON lines),
from which ``tests/fixtures/langchain_requests.jsonl`` is taken.

    python bench/frontends/langchain_bodies.py --client-venv /work/owui-venv
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import uvicorn

sys.path.insert(0, str(Path(__file__).parent))
from open_webui import Recorder, free_port, wait_http  # noqa: E402

CLIENT = """
import sys
from langchain_openai import ChatOpenAI
base = sys.argv[1]
messages = [("system", "You are Sam, a friendly nurse. You have two dogs. Keep answers short."),
            ("human", "hi ! do you have any cats ?")]
print(ChatOpenAI(base_url=base, api_key="none", model="personagpt", max_tokens=1024).invoke(messages).content)
print("".join(c.content for c in ChatOpenAI(base_url=base, api_key="none", model="personagpt",
                                             max_tokens=500, streaming=True).stream(messages)))
print(ChatOpenAI(base_url=base, api_key="none", model="personagpt", logprobs=True, n=2, max_tokens=20)
      .invoke(messages).content)
print(ChatOpenAI(base_url=base, api_key="none", model="personagpt", max_tokens=300, temperature=0.9,
                 frequency_penalty=0.3, presence_penalty=0.2, stop=["\\nYou:"], top_p=0.95).invoke(messages).content)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client-venv", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("bench/results/langchain_requests.jsonl"))
    args = parser.parse_args()
    ours, proxy_port = free_port(), free_port()
    log = Path(tempfile.mkdtemp()) / "server.log"
    server = subprocess.Popen([str(Path(sys.executable).parent / "personagpt"), "serve", "--port", str(ours)],
                              stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{ours}/health", 300, "personagpt serve", server)
        args.out.unlink(missing_ok=True)
        recorder = Recorder(f"http://127.0.0.1:{ours}", args.out)
        proxy = uvicorn.Server(uvicorn.Config(recorder.app, host="127.0.0.1", port=proxy_port, log_level="warning"))
        threading.Thread(target=proxy.run, daemon=True).start()
        wait_http(f"http://127.0.0.1:{proxy_port}/health", 30, "the recording proxy", server)
        result = subprocess.run([str(args.client_venv / "bin" / "python"), "-c", CLIENT,
                                 f"http://127.0.0.1:{proxy_port}/v1"], capture_output=True, text=True, timeout=600)
        print(result.stdout, result.stderr[-2000:])
        chats = [r for r in recorder.records if r["path"].endswith("/chat/completions")]
        print(f"{len(chats)} chat requests: statuses {[r['status'] for r in chats]}")
        print(json.dumps([r["body"] for r in chats])[:1500])
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
