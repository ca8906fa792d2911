"""The chat page in a real headless Chromium (Debian's chromium + chromium-driver), driven with Selenium."""

import os
import shutil
import time
from pathlib import Path

import pytest

from personagpt.models.load import build_gpt2, load_chat_model
from personagpt.generate.sampling import DEFAULT_CANDIDATES
from personagpt.serve import ServerSettings, create_app

from conftest import LiveServer, no_eos

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs chromium and chromium-driver (.ci/run "
                                                                   "installs them)")


@pytest.fixture(scope="module")
def server(tokenizer, fmt):
    """A tiny model that never ends early, so every reply streams its max tokens; PERSONAGPT_PAGE_MODEL=bundled
    serves the bundled model instead (for the README's screenshots)."""
    if os.environ.get("PERSONAGPT_PAGE_MODEL") == "bundled":
        loader = lambda: load_chat_model(None)  # noqa: E731
    else:
        model = no_eos(build_gpt2(tokenizer, n_layer=2, n_embd=32, n_head=2, n_positions=256), fmt)
        # ~20 ms a token, as a real model on a CPU: the page must show a reply grow, not appear at once
        model.get_output_embeddings().register_forward_hook(lambda *_: time.sleep(0.02))
        loader = lambda: (model, fmt)  # noqa: E731
    with LiveServer(create_app(ServerSettings(precision="no", max_context=256), loader=loader)) as live:
        yield live


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_window_size(1280, 800)
    yield driver
    driver.quit()


def wait_for(condition, timeout=60, what="condition"):
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except StaleElementReferenceException:  # re-rendered while we looked: look again
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def console_errors(driver, allowed=()):
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"
            and not any(a in e["message"] for a in allowed)]


def test_the_page_as_a_person_uses_it(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    shots = Path(os.environ.get("PERSONAGPT_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    driver, find = browser, browser.find_element
    driver.get(server.url + "/")
    driver.execute_script("localStorage.clear()")
    driver.get(server.url + "/")
    wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#goal-buttons button")) == 11, what="goal buttons")
    hint = find(By.CSS_SELECTOR, "#messages .empty").text  # not an empty white box: who the bot is, how to steer
    assert "i have two dogs." in hint and "Steer the next reply" in hint
    driver.save_screenshot(str(shots / "page-first-load-1280x800.png"))

    # settings: a short reply, so the test is quick
    tokens = find(By.ID, "max-tokens")
    tokens.clear()
    tokens.send_keys("12", Keys.TAB)

    # persona: edit the first fact, add a third
    find(By.ID, "fact-0").send_keys(Keys.CONTROL, "a", Keys.NULL, Keys.DELETE, "i love jazz.", Keys.TAB)
    find(By.ID, "add-fact").click()
    driver.switch_to.active_element.send_keys("i play the saxophone.", Keys.TAB)
    values = [e.get_attribute("value") for e in driver.find_elements(By.CSS_SELECTOR, "#facts input")]
    assert values == ["i love jazz.", "i work as a nurse.", "i play the saxophone."]

    # chat: Enter sends, the reply streams into a bubble
    box = find(By.ID, "input")
    box.send_keys("hi ! what music do you like ?")
    box.send_keys(Keys.SHIFT, Keys.ENTER)  # a new line, not a send
    assert driver.execute_script("return document.getElementById('input').value").endswith("\n")
    driver.execute_script("""window.updates = 0; new MutationObserver(() => window.updates++)
        .observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});""")
    driver.execute_script("""const plain = window.fetch; window.bodies = [];
        window.fetch = async (...args) => { const r = await plain(...args);
            r.clone().text().then(t => window.bodies.push(t)); return r; };""")  # what the server answers
    box.send_keys("tell me", Keys.ENTER)

    def done():
        if find(By.ID, "send").get_attribute("disabled"):
            return None  # still streaming
        texts = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".msg.assistant .text")]
        return texts[-1] if texts else None

    reply = wait_for(done, what="a streamed reply")
    assert driver.execute_script("return window.updates") > 4, "the reply should grow piece by piece"
    streamed = [b for b in driver.execute_script("return window.bodies") if "chat.completion.chunk" in b]
    assert streamed and '"persona"' in streamed[-1]  # streamed with the server's defaults
    assert (f'"candidates": {DEFAULT_CANDIDATES}' in streamed[-1]) == (DEFAULT_CANDIDATES > 1)
    assert find(By.CSS_SELECTOR, ".msg.user .text").text == "hi ! what music do you like ?\ntell me"

    # steering: a goal button applies to the reply to the next message, which shows its goal and a verdict
    pets = find(By.XPATH, "//details[@id='steering']/summary")
    pets.click()
    find(By.XPATH, "//button[@data-goal='ask about pets.']").click()
    assert find(By.XPATH, "//button[@data-goal='ask about pets.']").get_attribute("aria-pressed") == "true"
    pending = find(By.ID, "pending-goal")  # the click shows at once what it does
    assert pending.is_displayed() and "The next reply will pursue: ask about pets." in pending.text
    find(By.ID, "input").send_keys("i have a cat .", Keys.ENTER)
    steered = wait_for(lambda: [e for e in driver.find_elements(By.CSS_SELECTOR, ".msg.assistant .meta")
                                if "[ask about pets.]" in e.text and "goal" in e.text], what="a steered reply")
    assert "✓ goal met" in steered[0].text or "✗ goal not met" in steered[0].text  # the labeler's verdict
    assert not find(By.ID, "pending-goal").is_displayed()
    driver.save_screenshot(str(shots / "page-1280x800.png"))
    assert console_errors(driver) == []

    # the conversation survives a reload
    count = len(driver.find_elements(By.CSS_SELECTOR, ".msg"))
    driver.refresh()
    wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, ".msg")) == count, what="the kept conversation")
    assert reply in [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".msg.assistant .text")]

    # phone width: the page still fits
    driver.set_window_size(390, 844)
    wide = driver.execute_script("""const w = document.documentElement.clientWidth;
        return [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > w + 0.5)
            .map(e => e.tagName + '#' + e.id + '.' + e.className).slice(0, 5);""")
    assert wide == [], wide  # nothing wider than the phone's screen
    driver.save_screenshot(str(shots / "page-390x844.png"))
    driver.set_window_size(1280, 800)

    # at phone width the persona panel is below the chat: no text may point "to the left"
    assert "on the left" not in driver.find_element(By.TAG_NAME, "body").get_attribute("textContent")

    # Stop before any reply: the message says it was not answered, and the next one replaces it
    count = len(driver.find_elements(By.CSS_SELECTOR, ".msg"))
    driver.execute_script("""const plain = window.fetch;  // the next reply is slow to start: Stop comes first
        window.fetch = (url, options) => {
            if (url !== '/v1/chat/completions' || window.slowed) return plain(url, options);
            window.slowed = true;
            return new Promise((resolve, reject) => {
                const timer = setTimeout(() => resolve(plain(url, options)), 5000);
                options.signal.addEventListener('abort', () => {
                    clearTimeout(timer); reject(new DOMException('stopped', 'AbortError')); });
            });
        };""")
    find(By.ID, "input").send_keys("are you there ?", Keys.ENTER)
    wait_for(lambda: not find(By.ID, "stop").get_attribute("disabled"), what="Stop enabled")
    find(By.ID, "stop").click()
    stopped = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, ".msg.user.stopped"), what="a stopped mark")
    assert "not answered" in stopped[-1].text and "are you there ?" in stopped[-1].text
    find(By.ID, "input").send_keys("hello again", Keys.ENTER)
    wait_for(lambda: not find(By.ID, "send").get_attribute("disabled") and len(
        driver.find_elements(By.CSS_SELECTOR, ".msg")) == count + 2, what="the reply to the next message")
    users = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".msg.user .text")]
    assert users[-1] == "hello again" and "are you there ?" not in users
    count = len(driver.find_elements(By.CSS_SELECTOR, ".msg"))

    # an error is shown in place: a message too long for the context
    find(By.ID, "input").send_keys("word " * 400, Keys.ENTER)
    error = wait_for(lambda: find(By.ID, "chat-error").is_displayed() and find(By.ID, "chat-error").text,
                     what="the error")
    assert "context" in error and "HTTP 400" in error
    assert len(driver.find_elements(By.CSS_SELECTOR, ".msg")) == count  # the refused message went back to the box
    assert find(By.ID, "input").get_attribute("value").startswith("word word")
    assert console_errors(driver, allowed=("status of 400",)) == []

    # self-play: two turns, each appearing with the interviewer's goal
    find(By.ID, "tab-selfplay").click()
    assert driver.execute_script("""const input = document.getElementById('sp-goals');
        const ctx = document.createElement('canvas').getContext('2d');
        ctx.font = getComputedStyle(input).font;
        return ctx.measureText(input.placeholder).width < input.clientWidth;"""), "the placeholder is cut off"
    assert driver.execute_script("return document.querySelector('label[for=sp-random]').contains("
                                 "document.getElementById('sp-random'))")  # the checkbox sits in its label
    turns = find(By.ID, "sp-turns")
    turns.clear()
    turns.send_keys("2")
    find(By.ID, "sp-goals").send_keys("1, talk about music.")
    find(By.ID, "sp-run").click()
    items = wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#selfplay-turns li")) == 4
                     and not find(By.ID, "sp-run").get_attribute("disabled")
                     and driver.find_elements(By.CSS_SELECTOR, "#selfplay-turns li"), what="self-play turns")
    assert items[0].text.startswith("Interviewer [ask about pets.]:")
    assert items[2].text.startswith("Interviewer [talk about music.]:") and items[1].text.startswith("Bot:")
    driver.save_screenshot(str(shots / "page-selfplay-1280x800.png"))
    assert console_errors(driver, allowed=("status of 400",)) == []


def test_a_character_card_imports_on_the_page(server, browser, tmp_path):
    """Import takes a character card (a PNG with its chunk): the facts its prose gives fill the Persona panel, a
    note says where they came from, and the card's greeting opens the chat."""
    import base64
    import json

    from selenium.webdriver.common.by import By

    from personagpt.personas.cards import png_with_text

    card = {"spec": "chara_card_v2", "spec_version": "2.0", "data": {
        "name": "Sam", "description": "{{char}} is a nurse. {{char}} has two dogs. Keep answers short.",
        "personality": "", "scenario": "", "first_mes": "hi {{user}} ! i am {{char}} ."}}
    path = tmp_path / "sam.png"
    path.write_bytes(png_with_text("chara", base64.b64encode(json.dumps(card).encode()).decode()))
    driver = browser
    driver.get(server.url + "/")
    driver.execute_script("localStorage.clear()")
    driver.get(server.url + "/")
    upload = driver.find_element(By.ID, "import-persona")
    driver.execute_script("arguments[0].hidden = false", upload)  # the Import button opens it for a person
    upload.send_keys(str(path))
    note = wait_for(lambda: driver.find_element(By.ID, "card-note").text or None, what="the card's note")
    facts = [e.get_attribute("value") for e in driver.find_elements(By.CSS_SELECTOR, "#facts input")]
    assert facts == ["i am a nurse.", "i have two dogs."] and "From Sam's card: 2 facts" in note
    assert "Keep answers short." in note  # what was left out is said
    assert driver.find_element(By.CSS_SELECTOR, ".msg.assistant .text").text == "hi there! i am Sam."


def test_api_docs_render_offline(server, browser):
    """/docs is Swagger UI from files in the package: it renders with no network (a CDN page stays blank)."""
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/docs")
    paths = wait_for(lambda: [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")],
                     what="the endpoints in Swagger UI")
    assert {"/v1/chat/completions", "/v1/completions", "/v1/goals", "/v1/selfplay"} <= set(paths)
    scripts = browser.execute_script("return [...document.scripts].map(s => s.src).filter(Boolean)")
    assert scripts and all(src.startswith(server.url) for src in scripts)
