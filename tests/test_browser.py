"""The drawing page in a real headless Chromium (Debian's `chromium`, driven by Playwright).

A stroke drawn with the mouse must produce a prediction, ten probability bars and the 28x28 image
the model saw, and what the page shows must be what the API answers for the same canvas. Screenshots
go to test-artifacts/ (git-ignored) for people to look at.
"""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import httpx
import pytest

from digitpi.bench.server import launch

CHROMIUM = os.environ.get("DIGITPI_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
SEVEN = [(0.22, 0.22), (0.78, 0.22), (0.62, 0.45), (0.45, 0.82)]  # a stroke of "7", in canvas fractions
INTERVAL_S = 0.120  # the page's INTERVAL_MS between requests
SETTLED = "() => !inFlight && !dirty && !timer && !document.getElementById('digit').classList.contains('empty')"


@pytest.fixture(scope="module")
def server(exported_dir):
    with launch(exported_dir) as launched:
        yield launched.url


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (never `playwright install`)")
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium (or set DIGITPI_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def draw(page, points: list[tuple[float, float]]) -> None:
    box = page.locator("#board").bounding_box()
    xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for x, y in xy[1:]:
        page.mouse.move(x, y, steps=12)
        page.wait_for_timeout(250)  # a human pace: the page reads the digit while it is drawn
    page.mouse.up()


def shown(page) -> dict:
    return page.evaluate("""() => ({
        digit: document.getElementById('digit').textContent,
        bars: [...document.querySelectorAll('#bars .bar .fill')].map(b => parseFloat(b.style.height)),
        top: [...document.querySelectorAll('#bars .bar')].findIndex(b => b.classList.contains('top')),
        seen: [document.getElementById('seen').naturalWidth, document.getElementById('seen').hidden],
        canvas: upload().toDataURL('image/png'),  // the drawing as the page sends it
    })""")


@pytest.mark.parametrize("viewport,name", [({"width": 1100, "height": 720}, "desktop"),
                                           ({"width": 390, "height": 844}, "phone")])
def test_drawing_shows_the_models_reading(browser, server, viewport, name):
    context = browser.new_context(viewport=viewport, device_scale_factor=2 if name == "phone" else 1,
                                  is_mobile=name == "phone", has_touch=name == "phone")
    page = context.new_page()
    errors, predicts = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: predicts.append(r.url) if r.url.endswith("/predict") else None)
    page.goto(server + "/")
    assert page.locator("#bars .bar").count() == 10
    assert page.locator("#digit").text_content() == "?"

    start = time.monotonic()
    draw(page, SEVEN)
    page.wait_for_function(SETTLED, timeout=15_000)
    drawing_s = time.monotonic() - start
    page.wait_for_function("() => document.getElementById('model').textContent.includes('Model:')", timeout=5_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"serve-page-{name}.png"), full_page=True)

    assert 3 <= len(predicts) <= drawing_s / INTERVAL_S + 2  # updated while drawing, throttled to the interval
    state = shown(page)
    assert state["digit"].isdigit() and len(state["bars"]) == 10
    assert sum(state["bars"]) == pytest.approx(100, abs=1.0)  # the bars are the ten probabilities
    assert state["top"] == int(state["digit"]) and state["seen"] == [28, False]
    png = base64.b64decode(state["canvas"].split(",", 1)[1])  # what the page drew, asked of the API directly
    answer = httpx.post(server + "/predict", content=png, headers={"Content-Type": "image/png"}).json()
    assert answer["digit"] == int(state["digit"])
    assert state["bars"][answer["digit"]] == pytest.approx(100 * answer["confidence"], abs=0.1)
    assert answer["digit"] == 7  # a trained model reads the drawn seven
    if name == "phone":  # nothing sticks out sideways on a phone
        assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]

    page.click("#clear")
    assert page.locator("#digit").text_content() == "?"
    assert shown(page)["bars"] == [0.0] * 10
    assert not errors
    context.close()
