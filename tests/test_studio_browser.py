"""The story studio in a real browser: headless Chromium (Debian's chromium and chromium-driver)
driven by selenium. It types a prompt, writes a story, checks each token's probability and a
token's 5 alternatives, rewrites the story from one of them, stops a story mid-way, and saves a
screenshot.

The screenshot goes to tmp_path; SLM_STUDIO_SCREENSHOT=PATH writes it there instead (docs/studio.png
is made that way), and SLM_STUDIO_CHECKPOINT=PATH serves a trained checkpoint instead of the tiny
untrained model. Skips, saying why, where selenium, Chromium or its driver is missing.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from test_model_usage import save_checkpoint, tiny_model

import model_usage
from slm import studio
from slm.hardware import pick_dtype

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (requirements-dev.txt)"
)
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
LENGTH = 60
WAIT_S = 60


def find_browser() -> tuple[str, str]:
    """(Chromium's path, chromedriver's path), or the test skips naming what is missing."""
    browser = next((p for name in BROWSERS if (p := shutil.which(name))), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        missing = " and ".join(
            what for what, path in (("chromium", browser), ("chromedriver", driver)) if not path
        )
        pytest.skip(f"no {missing} on PATH (Debian: apt-get install chromium chromium-driver)")
    return browser, driver


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(Studio, URL) of a studio in a thread of this process."""
    path = os.environ.get("SLM_STUDIO_CHECKPOINT") or save_checkpoint(
        tiny_model(seed=5, block_size=64), tmp_path_factory.mktemp("browser") / "best.pt"
    )
    model, ckpt, enc = model_usage.load_for_inference(path, "cpu")
    the_studio = studio.Studio(model, ckpt, enc, str(path), "cpu", pick_dtype("auto", "cpu"))
    server = studio.make_server(the_studio, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield the_studio, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    chromium, chromedriver = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,820")
    try:
        driver = webdriver.Chrome(service=webdriver.ChromeService(chromedriver), options=options)
    except Exception as e:  # a browser that cannot start here is a missing browser
        pytest.skip(f"Chromium did not start: {str(e).splitlines()[0]}")
    yield driver
    driver.quit()


def wait(driver, condition, what: str):
    return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(
        lambda d: condition(d), message=f"waited {WAIT_S} s for {what}"
    )


def story_state(driver) -> str:
    return driver.find_element(By.ID, "story").get_attribute("data-state") or ""


def tokens(driver) -> list[dict]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#story .tok')].map((el) => ({id: +el.dataset.id, "
        "p: +el.dataset.p, text: el.textContent, chosen: el.classList.contains('chosen'), "
        "shade: el.style.backgroundColor}))"
    )


def set_value(driver, element_id: str, value) -> None:
    box = driver.find_element(By.ID, element_id)
    box.clear()
    box.send_keys(str(value))


def test_write_inspect_rewrite_stop_in_a_browser(served, browser, tmp_path):
    the_studio, url = served
    browser.get(url)
    wait(browser, lambda d: "step" in d.find_element(By.ID, "facts").text, "the model's facts")

    # write: a prompt typed, settings set, Write pressed, the story streamed in
    set_value(browser, "prompt", "Once upon a time, a little dog")
    set_value(browser, "length", LENGTH)
    set_value(browser, "seed", 7)
    browser.find_element(By.ID, "write").click()
    wait(browser, lambda d: story_state(d) == "done", "the story")
    story = tokens(browser)
    assert browser.find_element(By.ID, "story-prompt").text == "Once upon a time, a little dog"
    assert 0 < len(story) <= LENGTH
    assert all(0 < t["p"] <= 1 and t["shade"].startswith("rgb") for t in story)

    # inspect: hovering a token shows its 5 likeliest tokens, likeliest first
    i = min(4, len(story) - 1)
    target = browser.find_element(By.CSS_SELECTOR, f'#story .tok[data-i="{i}"]')
    ActionChains(browser).move_to_element(target).perform()
    alts = browser.find_elements(By.CSS_SELECTOR, "#inspector .alt")
    ps = [float(a.get_attribute("data-p")) for a in alts]
    assert len(alts) == 5 and ps == sorted(ps, reverse=True) and 0 < sum(ps) <= 1 + 1e-5
    ids = [int(a.get_attribute("data-id")) for a in alts]
    if story[i]["id"] in ids:  # the token drawn is among them with its own probability
        assert ps[ids.index(story[i]["id"])] == pytest.approx(story[i]["p"])

    # rewrite: clicking another alternative keeps the story before it, puts it there, goes on
    pick = next(k for k, tok in enumerate(ids) if tok != story[i]["id"] and tok != 50256)
    alts[pick].click()
    wait(browser, lambda d: story_state(d) == "done", "the rewritten story")
    rewritten = tokens(browser)
    assert [t["id"] for t in rewritten[:i]] == [t["id"] for t in story[:i]]
    assert rewritten[i]["id"] == ids[pick] and rewritten[i]["chosen"]
    assert rewritten[i]["p"] == pytest.approx(ps[pick])
    assert i < len(rewritten) <= LENGTH and not any(t["chosen"] for t in rewritten[i + 1 :])

    # the screenshot: a story with its probabilities, one token's alternatives beside it
    j = min(len(rewritten) - 1, i + 6)
    shown = browser.find_element(By.CSS_SELECTOR, f'#story .tok[data-i="{j}"]')
    ActionChains(browser).move_to_element(shown).perform()
    shot = Path(os.environ.get("SLM_STUDIO_SCREENSHOT") or tmp_path / "studio.png")
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000

    # stop: a long story stopped after a few tokens stays stopped, and the server stops it too
    set_value(browser, "length", 1000)
    the_studio.last_story = {}
    browser.find_element(By.ID, "write").click()
    wait(browser, lambda d: len(tokens(d)) >= 5, "the first tokens")
    browser.find_element(By.ID, "stop").click()
    assert story_state(browser) == "stopped"
    deadline = time.monotonic() + 20
    while the_studio.last_story.get("reason") != "disconnected" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert the_studio.last_story.get("reason") == "disconnected"
    count = len(tokens(browser))
    time.sleep(0.5)
    assert len(tokens(browser)) == count < 1000
    assert browser.find_element(By.ID, "write").is_enabled()
