"""The chat page at ``/`` in a real browser: Debian's chromium, headless, driven by selenium through
Debian's chromium-driver, against a real ``ise serve`` with an API key and the built-in model.

A person opens the page, is told the server needs a key, sees a wrong key refused, then asks a
question and reads the answer as it streams, with its time to first token, tokens per second and
the server's own timings; stops a long answer (and the engine lets go of it, as ``/metrics``
shows); and hostile text (``<img onerror>``, ``<script>``) typed into the conversation or the
system prompt shows as text, runs nothing and adds no element. The screenshot in the README is
taken here: ``ISE_UPDATE_SCREENSHOT=1`` writes it to docs/web-ui.png (otherwise to the test's
temporary directory, so a test run leaves the checkout as it was).

One test uses a fake: the built-in model cannot be made to answer with chosen markup, so the
check that the page puts the *model's* output in as text serves the page's own files from a tiny
HTTP server on 127.0.0.1 whose ``/v1/chat/completions`` streams a canned answer. That server
sends no Content-Security-Policy, so what keeps the markup inert there is the page's script
alone, not the policy ise adds.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from tests.helpers import metric_sample
from tests.real.helpers import SMALL_SERVER, ServerHandle, bearer, running_server, scrape_now

ROOT = Path(__file__).resolve().parents[2]
README_SCREENSHOT = ROOT / "docs" / "web-ui.png"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
KEY = "sk-ise-web-ui-test"
HOSTILE = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
QUESTION = "What is the capital of France?"

Driver = webdriver.Chrome


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    log = tmp_path_factory.mktemp("web-ui") / "ise.log"
    with running_server([*SMALL_SERVER, "--api-key", KEY], log) as handle:
        yield handle


@pytest.fixture(scope="module")
def browser() -> Iterator[Driver]:
    """Headless chromium, the size of a laptop's window; scripts/test installs it when absent."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if shutil.which(path) is None]
    if missing:
        pytest.fail(f"{missing} not found: apt-get install -y chromium chromium-driver (scripts/test does)")
    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--window-size=1000,760", "--disable-gpu"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def until(driver: Driver, check: Callable[[Driver], Any], what: str, timeout_s: float = 60) -> Any:
    return WebDriverWait(driver, timeout_s, poll_frequency=0.05).until(check, f"still not {what} after {timeout_s} s")


def by_id(driver: Driver, element_id: str) -> WebElement:
    return driver.find_element(By.ID, element_id)


def notice(driver: Driver) -> str:
    element = by_id(driver, "notice")
    return element.text if element.is_displayed() else ""


def answers(driver: Driver) -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, ".message.assistant")


def prompt_text(driver: Driver) -> str:
    return str(by_id(driver, "prompt").get_attribute("value") or "")


def answer_texts(driver: Driver) -> list[str]:
    """The answers' text as it stands, read in one go (the page redraws them when one ends)."""
    texts: list[str] = driver.execute_script(
        "return [...document.querySelectorAll('.message.assistant .content')].map(e => e.textContent)"
    )
    return texts


def answered(count: int) -> Callable[[Driver], bool]:
    """Whether ``count`` answers are there and none is streaming (Stop is disabled again)."""
    return lambda driver: len(answer_texts(driver)) == count and not by_id(driver, "stop").is_enabled()


def ask(driver: Driver, text: str) -> None:
    prompt = by_id(driver, "prompt")
    prompt.clear()
    prompt.send_keys(text, Keys.ENTER)


def set_field(driver: Driver, element_id: str, value: str) -> None:
    field = by_id(driver, element_id)
    if not field.is_displayed():  # a setting, folded away until Settings is opened
        driver.find_element(By.CSS_SELECTOR, "#settings summary").click()
    field.clear()
    field.send_keys(value, Keys.TAB)  # the change event, as a person leaving the field fires it


def open_page(driver: Driver, url: str) -> None:
    """The page afresh: a new tab's session storage (no key, no conversation) at ``url``."""
    driver.get(url)
    driver.execute_script("sessionStorage.clear()")
    driver.get(url)


def with_key(driver: Driver, server: ServerHandle) -> None:
    open_page(driver, server.root_url + "/")
    until(driver, lambda d: by_id(d, "key-row").is_displayed(), "asking for the key")
    set_field(driver, "api-key", KEY)
    until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"), "listing the model")
    assert notice(driver) == ""


def nothing_ran(driver: Driver) -> None:
    """No element came out of the hostile text and none of its script ran."""
    assert driver.find_elements(By.CSS_SELECTOR, "#conversation img, #conversation script") == []
    assert driver.execute_script("return window.__xss") is None


def test_a_keyed_server_asks_for_the_key_and_refuses_a_wrong_one(browser: Driver, keyed: ServerHandle) -> None:
    open_page(browser, keyed.root_url + "/")
    until(browser, lambda d: "needs an API key" in notice(d), "telling the user a key is needed")
    assert by_id(browser, "key-row").is_displayed()
    set_field(browser, "api-key", "sk-wrong")
    until(browser, lambda d: "refused this API key" in notice(d), "showing the wrong key refused")
    assert "Incorrect API key provided" in notice(browser)
    assert "sk-wrong" not in browser.current_url  # the key lives in session storage, never in the URL
    assert browser.execute_script("return sessionStorage.getItem('ise-api-key')") == "sk-wrong"
    # A question sent with the wrong key is refused as visibly, and stays in the box to send again.
    ask(browser, QUESTION)
    until(
        browser, lambda d: "refused this API key" in notice(d) and by_id(d, "prompt").get_attribute("value"), "refused"
    )
    assert answers(browser) == []
    set_field(browser, "api-key", KEY)
    until(browser, lambda d: notice(d) == "", "accepting the right key")
    assert [o.text for o in browser.find_elements(By.CSS_SELECTOR, "#model option")] == [keyed.model]


def test_a_question_gets_a_streamed_answer_with_its_timings(
    browser: Driver, keyed: ServerHandle, tmp_path: Path
) -> None:
    with_key(browser, keyed)
    set_field(browser, "temperature", "0")
    set_field(browser, "max-tokens", "48")
    ask(browser, "Tell me about Paris in three sentences.")
    # Watch the answer as it arrives: it must grow in several steps while the request runs.
    lengths: set[int] = set()

    def finished(driver: Driver) -> bool:
        lengths.update(len(text) for text in answer_texts(driver))
        return answered(1)(driver)

    until(browser, finished, "done answering", timeout_s=120)
    assert len(lengths - {0}) >= 3, f"the answer did not stream: lengths seen {sorted(lengths)}"
    # The same question as the API answers it, greedy: the page sent what the user set.
    ask(browser, QUESTION)
    until(browser, answered(2), "done answering", timeout_s=120)
    # Exactly what the page sent and kept (the displayed text's spaces are the browser's to fold).
    kept = browser.execute_script("return JSON.parse(sessionStorage.getItem('ise-conversation'))")
    assert [m["role"] for m in kept] == ["user", "assistant", "user", "assistant"]
    sent = [{"role": m["role"], "content": m["content"]} for m in kept[:3]]
    body = {"model": keyed.model, "messages": sent, "temperature": 0, "max_tokens": 48}
    expected = httpx.post(f"{keyed.base_url}/chat/completions", json=body, headers=bearer(KEY), timeout=120)
    assert kept[3]["content"] == expected.json()["choices"][0]["message"]["content"]
    answer = answers(browser)[1]
    assert answer.find_element(By.CLASS_NAME, "content").text == kept[3]["content"].strip()
    stats = answer.find_element(By.CLASS_NAME, "stats").text
    assert "TTFT" in stats and "tok/s" in stats and "server: queue" in stats and "prefill" in stats, stats
    # The conversation stays in the page (across a reload, in this tab) until Clear.
    browser.refresh()
    until(browser, lambda d: len(answer_texts(d)) == 2, "the conversation kept")
    shot = README_SCREENSHOT if os.environ.get("ISE_UPDATE_SCREENSHOT") == "1" else tmp_path / "web-ui.png"
    assert browser.save_screenshot(str(shot)) and shot.read_bytes().startswith(b"\x89PNG")
    by_id(browser, "clear").click()
    assert answers(browser) == [] and browser.find_elements(By.CLASS_NAME, "message") == []


def test_stop_aborts_the_request_in_the_engine(browser: Driver, keyed: ServerHandle) -> None:
    with_key(browser, keyed)
    set_field(browser, "max-tokens", "400")
    aborted = {"reason": "client_disconnect"}
    released = "ise_abort_kv_release_seconds_count"

    before = scrape_now(keyed.root_url, KEY)
    ask(browser, "Write a long story about a dragon who learns to bake bread.")
    until(browser, lambda d: any(answer_texts(d)), "answering", timeout_s=120)
    by_id(browser, "stop").click()
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".message.assistant .stopped"), "showing it stopped")
    assert by_id(browser, "send").is_enabled() and notice(browser) == ""
    deadline = time.monotonic() + 30
    while True:
        now = scrape_now(keyed.root_url, KEY)
        done = (
            metric_sample(now, "ise_requests_aborted_total", **aborted)
            == metric_sample(before, "ise_requests_aborted_total", **aborted) + 1
            and metric_sample(now, released) == metric_sample(before, released) + 1  # the engine freed its cache
            and metric_sample(now, "ise_num_requests_running") == 0
        )
        if done:
            break
        assert time.monotonic() < deadline, "the stop never reached the engine"
        time.sleep(0.2)


def test_hostile_text_in_the_conversation_shows_as_text(browser: Driver, keyed: ServerHandle) -> None:
    with_key(browser, keyed)
    set_field(browser, "system", HOSTILE)
    set_field(browser, "max-tokens", "2")
    ask(browser, HOSTILE)
    until(browser, answered(1), "answered")
    user_message = browser.find_element(By.CSS_SELECTOR, ".message.user .content")
    assert user_message.text == HOSTILE
    nothing_ran(browser)


class _CannedChat(BaseHTTPRequestHandler):
    """The page's own files, one model, and a chat stream whose answer and reasoning are markup."""

    def do_GET(self) -> None:
        web = files("server.runtime").joinpath("web")
        if self.path == "/v1/models":
            self._send("application/json", json.dumps({"object": "list", "data": [{"id": "canned"}]}).encode())
        elif self.path in ("/", "/ui/app.js", "/ui/style.css"):
            name = "index.html" if self.path == "/" else self.path.removeprefix("/ui/")
            kind = {"html": "text/html", "js": "text/javascript", "css": "text/css"}[name.rsplit(".", 1)[1]]
            self._send(kind, web.joinpath(name).read_bytes())
        else:
            self.send_error(404)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        deltas = [{"reasoning_content": HOSTILE}, {"content": HOSTILE[:20]}, {"content": HOSTILE[20:]}]
        chunks: list[dict[str, Any]] = [{"choices": [{"index": 0, "delta": delta}]} for delta in deltas]
        chunks.append({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}})
        body = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
        self._send("text/event-stream", body.encode())

    def _send(self, content_type: str, body: bytes) -> None:
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@contextmanager
def canned_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CannedChat)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        thread.join()


def test_model_output_is_rendered_as_text(browser: Driver) -> None:
    with canned_server() as url:
        open_page(browser, url)
        until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"), "listing the model")
        ask(browser, "say something hostile")
        until(browser, answered(1), "answered")
        answer = answers(browser)[0]
        assert answer.find_element(By.CLASS_NAME, "content").text == HOSTILE
        reasoning = answer.find_element(By.CLASS_NAME, "reasoning")
        reasoning.click()  # reasoning is folded away from the answer until opened
        assert reasoning.find_element(By.TAG_NAME, "div").text == HOSTILE
        nothing_ran(browser)


def test_the_page_fits_a_phone(browser: Driver, keyed: ServerHandle) -> None:
    browser.set_window_size(390, 844)
    try:
        with_key(browser, keyed)
        width = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], f"the page scrolls sideways on a phone: {width}"
        for element_id in ("prompt", "send", "stop", "model", "clear"):
            box = browser.execute_script(
                "const r = arguments[0].getBoundingClientRect(); return [r.left, r.right];", by_id(browser, element_id)
            )
            assert box[0] >= 0 and box[1] <= width[1], (element_id, box)
    finally:
        browser.set_window_size(1000, 760)
