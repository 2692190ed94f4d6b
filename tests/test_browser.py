"""The drawing page in a real headless Chromium (Debian's `chromium`, driven by Playwright).

A stroke drawn with the mouse must produce a prediction, ten probability bars and the 28x28 image
the model saw, and what the page shows must be what the API answers for the same canvas. A photo of a
two-line page, picked or dropped, must come back boxed digit by digit with its lines read; blank paper
must say so. With `serve --collect`, a misread digit corrected on the page and a teach round's drawing
must land in the samples database and raise the page's counts. Screenshots go to test-artifacts/
(git-ignored) for people to look at.
"""

from __future__ import annotations

import base64
import io
import os
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from digitpi.bench.server import launch

CHROMIUM = os.environ.get("DIGITPI_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
SEVEN = [(0.22, 0.22), (0.78, 0.22), (0.62, 0.45), (0.45, 0.82)]  # a stroke of "7", in canvas fractions
FLAGGED_ONE = [(0.18, 0.34), (0.60, 0.12), (0.58, 0.88)]  # a continental 1, its long flag first: fast_export says 7
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
    assert page.locator("#teach").is_hidden()  # collecting is off unless the server runs with --collect
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


# ---------------------------------------------------------------- a photo of a page, taken or uploaded

PHOTO_SIZE = (2400, 1800)  # px: a phone photo, which the page shrinks to PHOTO_SIDE before sending
PHOTO_SIDE = 1024  # the page's PHOTO_SIDE: the server's load_side
PHOTO_DONE = ("() => document.querySelector('#photo-status').textContent !== '' &&"
              " !document.querySelector('#photo-status').textContent.startsWith('Reading')")


@pytest.fixture(scope="module")
def photo_server(fast_export):
    """The page served with the quick `fast` model: these tests are about the page, not the default model."""
    with launch(fast_export) as launched:
        yield launched.url


@pytest.fixture(scope="module")
def page_photo(mnist_test) -> tuple[bytes, list[str], list[list[tuple[int, int, int, int]]]]:
    """A JPEG photo (2400x1800) of a sheet with two lines of real test digits under uneven light: its
    bytes, the lines' text and each digit's box in the photo's pixels."""
    from PIL import Image

    from digitpi.bench.realistic import light_across, photograph, print_digits

    images, labels = mnist_test
    rng = np.random.default_rng(16)
    lines = [rng.choice(len(labels), size=n, replace=False) for n in (4, 3)]
    sheet = print_digits([images[line] for line in lines], 220, rng)
    at = ((PHOTO_SIZE[0] - sheet.ink.shape[1]) // 2, (PHOTO_SIZE[1] - sheet.ink.shape[0]) // 2)
    pixels, boxes = photograph(sheet, PHOTO_SIZE, at, rng, light_across(PHOTO_SIZE, rng), noise=4.0)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue(), ["".join(str(labels[i]) for i in line) for line in lines], boxes


def blank_photo() -> bytes:
    from PIL import Image

    from digitpi.bench.realistic import light_across, photograph

    rng = np.random.default_rng(0)
    pixels, _ = photograph(None, (1200, 900), (0, 0), rng, light_across((1200, 900), rng))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def photo_shown(page) -> dict:
    """The lines the page shows, and each box as fractions (left, top, right, bottom) of the photo shown."""
    return page.evaluate("""() => {
        const img = document.getElementById('photo-shown').getBoundingClientRect();
        return {
            lines: [...document.querySelectorAll('#photo-lines .photo-text')].map(e => e.textContent),
            tags: [...document.querySelectorAll('.photo-box')].map(b => [Number(b.dataset.line), b.textContent]),
            boxes: [...document.querySelectorAll('.photo-box')].map(b => {
                const r = b.getBoundingClientRect();
                return [(r.left - img.left) / img.width, (r.top - img.top) / img.height,
                        (r.right - img.left) / img.width, (r.bottom - img.top) / img.height];
            }),
            status: document.getElementById('photo-status').textContent,
            error: document.getElementById('photo-status').classList.contains('photo-error'),
        };
    }""")


@pytest.mark.parametrize("viewport,name", [({"width": 1100, "height": 720}, "desktop"),
                                           ({"width": 390, "height": 844}, "phone")])
def test_a_photo_of_a_page_shows_its_lines_and_boxes(browser, photo_server, page_photo, viewport, name, tmp_path):
    jpeg, texts, truth = page_photo
    context = browser.new_context(viewport=viewport, device_scale_factor=2 if name == "phone" else 1,
                                  is_mobile=name == "phone", has_touch=name == "phone")
    page = context.new_page()
    errors, uploads = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: uploads.append(r.headers["content-type"]) if "/predict?multi=1" in r.url else None)
    page.goto(photo_server + "/")
    picker = page.locator("#photo-input")
    assert picker.get_attribute("accept") == "image/*" and picker.get_attribute("capture") == "environment"
    (tmp_path / "page.jpg").write_bytes(jpeg)
    picker.set_input_files(str(tmp_path / "page.jpg"))  # what the phone's camera or the file picker hands over
    page.wait_for_function(PHOTO_DONE, timeout=30_000)
    page.locator("#photo").scroll_into_view_if_needed()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"photo-page-{name}.png"), full_page=True)

    state = photo_shown(page)
    assert not state["error"] and state["status"].startswith("7 digits on 2 lines"), state["status"]
    assert state["lines"] == texts  # the digits written, line by line
    assert state["tags"] == [[n, digit] for n, text in enumerate(texts) for digit in text]
    for (left, top, right, bottom), (t_left, t_top, t_right, t_bottom) in zip(state["boxes"], sum(truth, [])):
        x, y = (left + right) / 2 * PHOTO_SIZE[0], (top + bottom) / 2 * PHOTO_SIZE[1]
        assert t_left <= x <= t_right and t_top <= y <= t_bottom  # each box sits on its digit

    from PIL import Image

    assert uploads == ["image/jpeg"]  # one request for one photo
    sent = base64.b64decode(page.evaluate("""async () => {  // the picture shown is the one sent
        const bytes = new Uint8Array(await (await fetch(document.getElementById('photo-shown').src)).arrayBuffer());
        let text = '';
        bytes.forEach(b => { text += String.fromCharCode(b); });
        return btoa(text);
    }"""))
    picture = Image.open(io.BytesIO(sent))  # shrunk in the browser: a phone photo is not sent whole
    assert picture.format == "JPEG" and picture.size == (PHOTO_SIDE, PHOTO_SIDE * 3 // 4) and len(sent) < len(jpeg)
    answer = httpx.post(photo_server + "/predict?multi=1", content=sent, headers={"Content-Type": "image/jpeg"}).json()
    assert [line["text"] for line in answer["lines"]] == state["lines"]  # the page shows what the API answers
    if name == "phone":
        assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
    assert not errors
    context.close()


def test_a_photo_without_digits_says_so(browser, photo_server, page_photo):
    """Dropped on the page (the photo zone, or the drawing beside it): blank paper is a clear message, and
    the boxes of the photo before it go."""
    page = browser.new_page(viewport={"width": 1100, "height": 720})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(photo_server + "/")
    for picture, name, target in ((page_photo[0], "page.jpg", "#board"), (blank_photo(), "blank.jpg", "#photo-drop")):
        dropped = page.evaluate_handle("""([b64, name]) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, {type: 'image/jpeg'}));
            return dt;
        }""", [base64.b64encode(picture).decode("ascii"), name])
        page.dispatch_event(target, "drop", {"dataTransfer": dropped})
        page.wait_for_function(PHOTO_DONE, timeout=30_000)
        state = photo_shown(page)
        if name == "page.jpg":
            assert state["lines"] == page_photo[1] and not state["error"]
            page.evaluate("document.getElementById('photo-status').textContent = ''")
    assert state["error"] and state["status"].startswith("No digit found in this photo")
    assert state["lines"] == [] and state["boxes"] == []
    assert not errors
    page.close()


@pytest.fixture(scope="module")
def collecting_server(fast_export, tmp_path_factory):
    db = tmp_path_factory.mktemp("collect") / "samples.db"
    with launch(fast_export, args=["--collect", "--samples", str(db)]) as launched:
        yield launched.url, db


def counts(page) -> list[int]:
    return page.evaluate("() => [...document.querySelectorAll('#teach-keys .count')].map(c => +c.textContent)")


def test_correcting_a_misread_digit_and_a_teach_round_save_samples(browser, collecting_server):
    from digitpi import samples

    url, db = collecting_server
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    page.wait_for_selector("#teach", state="visible", timeout=10_000)
    page.wait_for_function("() => document.querySelectorAll('#teach-keys .count').length === 10")
    assert counts(page) == [0] * 10
    assert page.locator("#teach-keys button").first.is_disabled()  # nothing to correct before a drawing

    draw(page, FLAGGED_ONE)
    page.wait_for_function(SETTLED, timeout=15_000)
    read = int(page.locator("#digit").text_content())
    assert read != 1  # the model misreads the flagged 1 ...
    page.locator("#teach-keys button[data-digit='1']").click()  # ... and the user says "it's a 1"
    page.wait_for_function("() => document.querySelector('#teach-keys button[data-digit=\"1\"] .count')"
                           ".textContent === '1'", timeout=10_000)
    assert f"the model read {read}" in page.locator("#teach-status").text_content()
    assert page.locator("#digit").text_content() == "?"  # the board is cleared for the next digit
    with samples.SampleStore(db, create=False) as store:
        (sample,) = store.samples()
    assert (sample.label, sample.predicted, sample.origin, sample.picture_format) == (1, read, "correction", "PNG")

    page.click("#teach-start")  # a teach round: the page asks for a digit, the user draws and saves it
    asked = int(page.locator("#teach-prompt b").text_content())
    assert "1 of 30" in page.locator("#teach-prompt").text_content()
    draw(page, SEVEN)
    page.wait_for_function(SETTLED, timeout=15_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve-page-teach.png"), full_page=True)
    page.click("#teach-save")
    page.wait_for_function("() => document.getElementById('teach-prompt').textContent.includes('2 of 30')",
                           timeout=10_000)
    expected = [0] * 10
    expected[1] += 1
    expected[asked] += 1
    assert counts(page) == expected
    with samples.SampleStore(db, create=False) as store:
        newest = store.listing(last=1)[0]
    assert (newest["label"], newest["origin"]) == (asked, "teach")
    page.click("#teach-stop")
    assert page.locator("#teach-start").is_visible() and page.locator("#teach-save").is_hidden()
    assert not errors
    context.close()


# ---------------------------------------------------------------- a tap, and the API docs offline


def test_a_tap_leaves_a_dot_that_is_read(browser, photo_server):
    """A tap draws what a pen would leave, a dot, and the page reads it (Chromium draws no zero-length line)."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                                  has_touch=True)
    page = context.new_page()
    failed = []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.goto(photo_server + "/")
    box = page.locator("#board").bounding_box()
    page.touchscreen.tap(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_function(SETTLED, timeout=15_000)
    ink = page.evaluate("() => ctx.getImageData(0, 0, board.width, board.height).data.filter((v, i) => i % 4 == 0 "
                        "&& v > 128).length")
    assert ink > 100  # the dot is on the board
    assert page.locator("#digit").text_content().isdigit()
    assert "blank" not in page.locator("#status").text_content()
    page.wait_for_load_state("networkidle")
    assert failed == []  # the favicon included: nothing the page asks for is missing
    context.close()


# ReDoc's "API docs by Redocly" logo, always asked of its CDN; it hides itself when that fails. Nothing else may be.
OPTIONAL_ELSEWHERE = {"https://cdn.redoc.ly/redoc/logo-mini.svg"}


@pytest.mark.parametrize("path, shows", [("/docs", ".opblock-summary-path >> text=/predict"),  # Swagger UI's list
                                         ("/redoc", "h2 >> text=read a digit")])  # ReDoc's section heading
def test_api_docs_render_with_no_other_host(browser, photo_server, path, shows):
    """Swagger UI and ReDoc draw the API with every request to another host refused, as on an offline Pi."""
    context = browser.new_context()
    elsewhere = []

    def only_here(route):
        if route.request.url.startswith(photo_server + "/"):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    context.route("**/*", only_here)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(photo_server + path)
    page.wait_for_selector(shows, timeout=30_000)  # drawn from /openapi.json by the served script
    page.wait_for_load_state("networkidle")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"api{path.replace('/', '-')}.png"))
    assert set(elsewhere) <= OPTIONAL_ELSEWHERE and errors == []
    context.close()
