"""Open WebUI in front of `personagpt serve`, driven in headless Chromium as a new user would use it.

Starts our server as users do (``personagpt serve --port P``, defaults), a recording proxy in front of it (every
request body Open WebUI sends and the status it got, saved to ``--out``/requests.jsonl; it can fail one chat
request on demand, to see what a failed turn does to the chat), and Open WebUI (its own venv, ``--webui``) pointed at
the proxy with nothing but the documented variables. Then, in one browser: the first message with Open WebUI's
defaults; regenerate; continue; a six-sentence instruction-style system prompt (Settings > General > System
Prompt, set through Open WebUI's own settings API) in a new chat; a failed turn followed by another message.
Screenshots of each step go to ``--out``; a summary (each step's reply and the statuses) to summary.json.

    python bench/frontends/open_webui.py --webui /work/owui-venv [--out bench/results/open_webui]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

SYSTEM_PROMPT = ("You are Sam, a friendly nurse. You have two dogs. You love hiking in the mountains. "
                 "Your favorite food is pizza. You live in Denver. Keep answers short.")
CHROMIUM, DRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Recorder:
    """A reverse proxy that records each request and the status it got; ``fail_next`` fails one chat request."""

    def __init__(self, upstream: str, log: Path) -> None:
        self.upstream, self.log, self.fail_next = upstream, log, False
        self.records: list[dict] = []
        self.app = Starlette(routes=[Route("/{path:path}", self.forward, methods=["GET", "POST", "OPTIONS"])])

    def _save(self, record: dict) -> None:
        self.records.append(record)
        with self.log.open("a") as f:
            f.write(json.dumps(record) + "\n")

    async def forward(self, request: Request):
        body = await request.body()
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = body.decode("utf-8", "replace")
        if isinstance(parsed, dict) and parsed.get("tools"):  # its built-in tools (about 40 KB): their names only
            parsed = parsed | {"tools": [{"type": "function", "function": {"name": t["function"]["name"],
                                                                           "parameters": {"type": "object"}}}
                                         for t in parsed["tools"]]}
        record = {"method": request.method, "path": request.url.path, "body": parsed, "at": time.time()}
        if self.fail_next and request.url.path.endswith("/chat/completions") and request.method == "POST":
            self.fail_next = False
            record["status"], record["injected_failure"] = 500, True
            self._save(record)
            return Response(json.dumps({"error": {"message": "injected failure (bench)", "type": "server_error"}}),
                            500, media_type="application/json")
        client = httpx.AsyncClient(base_url=self.upstream, timeout=300)
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "authorization", "accept")}
        upstream = await client.send(client.build_request(request.method, request.url.path, content=body,
                                                          headers=headers, params=request.query_params), stream=True)
        record["status"] = upstream.status_code
        if upstream.status_code >= 400:
            record["error"] = (await upstream.aread()).decode("utf-8", "replace")
            await upstream.aclose()
            await client.aclose()
            self._save(record)
            return Response(record["error"], upstream.status_code, media_type="application/json")
        self._save(record)

        async def relay():
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await upstream.aclose()
                await client.aclose()

        return StreamingResponse(relay(), upstream.status_code, media_type=upstream.headers.get("content-type"))


def wait_http(url: str, timeout: float, what: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited ({process.returncode}); see its log (server.log in --out, "
                             "webui.log in Open WebUI's data folder)")
        try:
            if httpx.get(url, timeout=5).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"{what} did not answer at {url} within {timeout:.0f} s")


class Browser:
    def __init__(self, base: str, out: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
            options.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service(DRIVER), options=options)
        self.driver.set_window_size(1280, 900)
        self.base, self.out = base, out

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def wait(self, condition, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = condition()
                if value:
                    return value
            except Exception:  # noqa: BLE001 - the page re-renders while we look: look again
                pass
            time.sleep(0.5)
        self.shot(f"timeout-{what.replace(' ', '-')}")
        raise TimeoutError(f"timed out waiting for {what}")

    def shot(self, name: str) -> None:
        self.driver.save_screenshot(str(self.out / f"{name}.png"))

    def open(self, path: str = "/") -> None:
        self.driver.get(self.base + path)
        self.wait(lambda: self.js("return document.querySelector('#chat-input')"), 120, "the chat input")
        time.sleep(2)
        self.js("document.querySelectorAll('button').forEach(b => { if (/Okay, Let's Go|Got it/i.test(b.innerText)) "
                "b.click(); })")  # the what's-new dialog of a first visit

    def responses(self) -> list[str]:
        return self.js("return [...document.querySelectorAll('#response-content-container')].map(e => e.innerText)")

    def page_errors(self) -> list[str]:
        return self.js("return [...document.querySelectorAll('[class*=\"error\"], [class*=\"red-\"]')]"
                       ".map(e => e.innerText).filter(t => t && t.length < 400)")

    def busy(self) -> bool:
        return bool(self.js("return document.querySelector('#stop-response-button, button[aria-label=\"Stop\"]')"))

    def settle(self, count: int, timeout: float = 180) -> str:
        """Wait for at least ``count`` responses and for generation to stop; the last response's text."""
        self.wait(lambda: len(self.responses()) >= count, timeout, f"response {count}")
        time.sleep(1)
        self.wait(lambda: not self.busy(), timeout, "generation to end")
        time.sleep(2)
        return self.responses()[-1]

    def send(self, text: str) -> None:
        from selenium.webdriver.common.by import By

        box = self.driver.find_element(By.ID, "chat-input")
        box.click()
        box.send_keys(text)
        time.sleep(0.5)
        self.wait(lambda: self.js("const b = document.querySelector('#send-message-button'); "
                                  "if (b && !b.disabled) { b.click(); return true; } return false;"), 20, "send button")

    def click_last(self, css: str) -> None:
        self.wait(lambda: self.js(f"const all = document.querySelectorAll('{css}'); if (!all.length) return false; "
                                  "all[all.length - 1].click(); return true;"), 20, css)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--webui", type=Path, required=True, help="the venv Open WebUI is installed in")
    parser.add_argument("--out", type=Path, default=Path("bench/results/open_webui"))
    parser.add_argument("--server-args", default="", help="extra arguments for personagpt serve")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*"):
        old.unlink()
    ours, proxy_port, webui_port = free_port(), free_port(), free_port()
    processes = []
    try:
        server = subprocess.Popen([str(Path(sys.executable).parent / "personagpt"), "serve", "--port", str(ours),
                                   *args.server_args.split()], stdout=open(args.out / "server.log", "w"),
                                  stderr=subprocess.STDOUT)
        processes.append(server)
        wait_http(f"http://127.0.0.1:{ours}/health", 300, "personagpt serve", server)
        recorder = Recorder(f"http://127.0.0.1:{ours}", args.out / "requests.jsonl")
        proxy = uvicorn.Server(uvicorn.Config(recorder.app, host="127.0.0.1", port=proxy_port, log_level="warning"))
        threading.Thread(target=proxy.run, daemon=True).start()
        data = Path(tempfile.mkdtemp(prefix="owui-"))
        env = os.environ | {"OFFLINE_MODE": "true", "WEBUI_AUTH": "false", "ENABLE_OLLAMA_API": "false",
                            "OPENAI_API_BASE_URL": f"http://127.0.0.1:{proxy_port}/v1", "OPENAI_API_KEY": "none",
                            "DATA_DIR": str(data), "HF_HUB_OFFLINE": "1", "ENABLE_VERSION_UPDATE_CHECK": "false"}
        webui = subprocess.Popen([str(args.webui / "bin" / "open-webui"), "serve", "--port", str(webui_port)],
                                 env=env, cwd=data, stdout=open(data / "webui.log", "w"), stderr=subprocess.STDOUT)
        processes.append(webui)
        wait_http(f"http://127.0.0.1:{webui_port}/health", 600, "Open WebUI", webui)
        summary = run_steps(Browser(f"http://127.0.0.1:{webui_port}", args.out), recorder)
        summary["requests"] = [{k: r.get(k) for k in ("method", "path", "status", "injected_failure", "error")}
                               for r in recorder.records]
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
        print(json.dumps({k: v for k, v in summary.items() if k != "requests"}, indent=1))
        chats = [r for r in recorder.records if r["path"].endswith("/chat/completions")]
        print(f"{len(chats)} chat requests: statuses {[r['status'] for r in chats]}")
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def run_steps(browser: Browser, recorder: Recorder) -> dict:
    steps: dict[str, dict] = {}

    def step(name: str, action, count: int) -> None:
        started = len(recorder.records)
        action()
        reply = browser.settle(count)
        browser.shot(name)
        statuses = [r["status"] for r in recorder.records[started:] if r["path"].endswith("/chat/completions")]
        steps[name] = {"reply": reply, "chat_statuses": statuses}
        print(name, json.dumps(steps[name]), flush=True)

    try:
        browser.open()
        browser.shot("0-opened")
        step("1-first-message", lambda: browser.send("hi ! what do you do for a living ?"), 1)
        step("2-regenerate", lambda: browser.click_last(".regenerate-response-button"), 1)
        step("3-continue", lambda: browser.click_last("#continue-response-button"), 1)
        token = browser.js("return localStorage.token")
        browser.js("return fetch('/api/v1/users/user/settings/update', {method: 'POST', headers: {'Content-Type': "
                   "'application/json', Authorization: 'Bearer ' + arguments[0]}, body: JSON.stringify({ui: "
                   "{system: arguments[1]}})}).then(r => r.status)", token, SYSTEM_PROMPT)
        browser.open()
        step("4-system-prompt", lambda: browser.send("hi ! tell me about yourself . are you a doctor ?"), 1)
        step("5-same-kind-question", lambda: browser.send("do you have any cats ?"), 2)
        recorder.fail_next = True
        step("6-failed-turn", lambda: browser.send("are you a doctor ?"), 3)
        steps["6-failed-turn"]["page_errors"] = browser.page_errors()[:5]
        step("7-after-failure", lambda: browser.send("where do you live ?"), 4)
    finally:
        browser.driver.quit()
    return {"steps": steps}


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
