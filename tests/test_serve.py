"""`digitpi serve` as users meet it: the real server in its own process on 127.0.0.1, spoken to over HTTP.

Answers are compared with the runtime itself on real MNIST test digits sent as PNG files; every kind of
bad input must get its status code and a JSON message, and the server must keep answering after it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import socket
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

from digitpi import reading, serve
from digitpi.bench.hostile import png_stream
from digitpi.bench.server import launch

PICKS = np.arange(0, 10_000, 157)  # 64 test digits spread over the whole test set


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def decode_data_url(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


@pytest.fixture(scope="module")
def server(fast_export):
    with launch(fast_export) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def classifier(fast_export):
    from digitpi.runtime import Classifier

    return Classifier.load(fast_export)


def runtime_reading(classifier, data: bytes) -> tuple[np.ndarray, int, np.ndarray]:
    """What the runtime alone makes of an upload: (28x28 model input, digit, probabilities)."""
    (digit,) = reading.read(classifier, data).digits
    return digit.image, digit.index, digit.probabilities


def assert_still_serving(client, mnist_test):
    images, labels = mnist_test
    assert client.get("/health").json()["status"] == "ok"
    r = client.post("/predict", content=png(images[0]), headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and r.json()["digit"] == labels[0]


def test_predictions_match_runtime_on_mnist_png(client, classifier, mnist_test):
    images, labels = mnist_test
    digits = []
    for n, i in enumerate(PICKS):
        data = png(images[i])
        if n % 2:  # half as raw bytes, half as a multipart upload, as `curl -F` sends it
            r = client.post("/predict", content=data, headers={"Content-Type": "image/png"})
        else:
            r = client.post("/predict", files={"file": (f"{i}.png", data, "image/png")})
        assert r.status_code == 200, r.text
        answer = r.json()
        seen, digit, probabilities = runtime_reading(classifier, data)
        assert answer["digit"] == digit
        np.testing.assert_allclose(answer["probabilities"], probabilities, atol=2e-6)
        assert answer["confidence"] == pytest.approx(float(probabilities[digit]), abs=2e-6)
        np.testing.assert_array_equal(decode_data_url(answer["input_png"]), seen)  # the page shows the real input
        assert set(answer["timing"]) == {"decode_ms", "model_ms", "total_ms"}
        assert 0 < answer["timing"]["model_ms"] <= answer["timing"]["total_ms"]
        digits.append(answer["digit"])
    assert np.mean(np.array(digits) == labels[PICKS]) >= 0.95  # a trained model reads real digits


def test_multi_reads_a_page_line_by_line(client, classifier, mnist_test):
    """Two written lines: the answer holds them top to bottom, each digit with its box, as the runtime reads them."""
    images, labels = mnist_test
    lines = [[3, 2, 1], [18, 4]]  # test digits the trained model reads correctly on their own
    page = np.zeros((100, 40 * 3), np.uint8)
    for row, picks in enumerate(lines):
        for k, i in enumerate(picks):
            page[6 + 50 * row:34 + 50 * row, 40 * k + 6:40 * k + 34] = images[i]
    data = png(page)
    r = client.post("/predict?multi=1", content=data, headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["text"] == "\n".join("".join(str(labels[i]) for i in picks) for picks in lines)
    assert answer["text"] == reading.read(classifier, data, page=True).text
    assert [line["text"] for line in answer["lines"]] == answer["text"].split("\n")
    for row, (line, picks) in enumerate(zip(answer["lines"], lines)):
        assert [d["digit"] for d in line["digits"]] == [int(labels[i]) for i in picks]
        for k, d in enumerate(line["digits"]):
            left, top, right, bottom = d["box"]  # within the 28x28 cell the digit was pasted in
            assert 40 * k + 6 <= left < right <= 40 * k + 34 and 6 + 50 * row <= top < bottom <= 34 + 50 * row
            assert len(d["probabilities"]) == 10


def test_model_health_and_openapi(client, classifier):
    health = client.get("/health").json()
    assert health == {"status": "ok", "model": classifier.card["model"], "precision": classifier.precision,
                      "backend": classifier.backend_name, "collect": False}
    assert client.get("/model").json() == json.loads(json.dumps(serve.public_card(classifier.card)))
    schema = client.get("/openapi.json").json()
    predict = schema["paths"]["/predict"]["post"]
    assert {"multipart/form-data", "image/*", "application/octet-stream"} <= set(predict["requestBody"]["content"])
    assert {"200", "400", "413", "415", "422"} <= set(predict["responses"])
    assert {"201", "403", "409", "413"} <= set(schema["paths"]["/samples"]["post"]["responses"])  # --collect
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<canvas" in page.text and "http://" not in page.text and "https://" not in page.text  # nothing external


LOADED = re.compile(r"""(?:src|href|spec-url)=["']([^"']+)["']|\burl: *["']([^"']+)["']""")  # what a page fetches


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_api_docs_come_from_this_server_alone(client, page):
    """Offline, as a Pi often is: the docs page and everything it loads are served here, none from a CDN."""
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    loaded = [a or b for a, b in LOADED.findall(r.text)]
    assert any(url.endswith(".js") for url in loaded) and "/openapi.json" in loaded and "/favicon.ico" in loaded
    assert "://" not in r.text  # no other host named anywhere in the page
    for url in loaded:
        assert url.startswith("/"), f"{page} loads {url}"
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 100, url
    scripts = [url for url in loaded if url.endswith(".js")]
    assert all(client.get(url).headers["content-type"].split(";")[0].endswith("javascript") for url in scripts)


def test_the_favicon(client):
    r = client.get("/favicon.ico")
    assert r.status_code == 200 and r.headers["content-type"] == "image/svg+xml"
    assert r.text.startswith("<svg") and "<path" in r.text
    assert '<link rel="icon" href="/favicon.ico"' in client.get("/").text


def too_big_chunks():
    for _ in range(48):  # 3 MiB with no Content-Length: only counting the chunks can stop it
        yield b"\x89PNG" + bytes(65532)


BAD_INPUTS = {
    "over 2 MB": (413, dict(content=bytes(3 * 1024 * 1024), headers={"Content-Type": "image/png"})),
    "over 2 MB chunked": (413, dict(content=too_big_chunks(), headers={"Content-Type": "image/png"})),
    "over 2 MB in a form": (413, dict(files={"file": ("big.png", bytes(3 * 1024 * 1024), "image/png")})),
    "text as image/png": (415, dict(content=b"hello, not a picture", headers={"Content-Type": "image/png"})),
    "truncated PNG": (415, "truncated"),
    "9400x9400 RGBA PNG": (415, "too large to decode"),  # a few hundred KB, 674 MB decoded: refused before decoding
    "text/plain body": (415, dict(content=b"7", headers={"Content-Type": "text/plain"})),
    "JSON body": (415, dict(json={"image": "7"})),
    "empty body": (400, dict(content=b"", headers={"Content-Type": "image/png"})),
    "form without a file": (400, dict(files={"image": (None, "seven")})),
    "blank image": (422, "blank"),
    "multi on a blank image": (422, "blank-multi"),
    "bad multi flag": (422, "bad-flag"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_json_error_and_server_carries_on(client, mnist_test, case):
    status, request = BAD_INPUTS[case]
    kind = request if isinstance(request, str) else None  # a picture made below rather than a request as is
    path = "/predict"
    if request == "truncated":
        request = dict(content=png(mnist_test[0][0])[:60], headers={"Content-Type": "image/png"})
    elif request == "too large to decode":
        request = dict(content=png_stream(9400, 9400, "RGBA"), headers={"Content-Type": "image/png"})
    elif request in ("blank", "blank-multi", "bad-flag"):
        path += {"blank": "", "blank-multi": "?multi=1", "bad-flag": "?multi=perhaps"}[request]
        request = dict(content=png(np.zeros((28, 28), np.uint8)), headers={"Content-Type": "image/png"})
    r = client.post(path, **request)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and len(body["error"]) > 5
    assert "too large to decode" in body["error"] or kind != "too large to decode"
    assert_still_serving(client, mnist_test)


def test_unknown_paths_and_methods_answer_json(client, mnist_test):
    for method, path, status in [("GET", "/nope", 404), ("GET", "/predict", 405), ("DELETE", "/model", 405)]:
        r = client.request(method, path)
        assert r.status_code == status and "error" in r.json()
    assert_still_serving(client, mnist_test)


def test_serve_module_never_imports_torch(fast_export, mnist_test):
    body = png(mnist_test[0][0])
    code = (
        "import sys\n"
        "from starlette.testclient import TestClient\n"
        "from digitpi import serve\n"
        "from digitpi.runtime import Classifier\n"
        f"app = serve.create_app(Classifier.load({str(fast_export)!r}))\n"
        f"r = TestClient(app, base_url='http://localhost').post('/predict', content={body!r},"
        " headers={'Content-Type': 'image/png'})\n"
        "assert r.status_code == 200, r.text\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_digitpi_serve_process_has_no_torch_loaded(server):
    """The real `digitpi serve` process: the CLI builds its parser from the torch-free config module."""
    with open(f"/proc/{server.pid}/maps") as f:
        libraries = {line.split()[-1] for line in f if "/" in line}
    assert any("onnxruntime" in path for path in libraries)  # the map is the server's, with its runtime
    assert not [path for path in libraries if "libtorch" in path]


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "digitpi.cli", *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_cli_mistakes_are_one_line_errors(tmp_path, fast_export):
    missing = run_cli("serve", "--model", str(tmp_path / "nothing-here"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.startswith("digitpi: error:") and len(missing.stderr.strip().splitlines()) == 1

    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        taken = run_cli("serve", "--model", str(fast_export), "--port", str(port))
    assert taken.returncode == 2 and "Traceback" not in taken.stderr
    assert taken.stderr.startswith("digitpi: error: cannot listen on")


def test_bench_serve_against_running_server(server):
    result = run_cli("bench", "serve", "--url", server.url, "-n", "60", "-c", "4", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["requests"] == 60 and report["errors"] == 0
    assert report["requests_per_s"] > 0 and 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]
    assert report["accuracy"] >= 0.95

    elsewhere = run_cli("bench", "serve", "--url", "http://192.0.2.1:8000", "-n", "10")
    assert elsewhere.returncode == 2 and "must point at this machine" in elsewhere.stderr


# ---------------------------------------------------------------- a Pi left serving on a network


def test_head_works_where_get_does(client):
    for path in ("/", "/health", "/model", "/openapi.json"):
        head, get = client.head(path), client.get(path)
        assert head.status_code == 200 and head.content == b"", path
        assert head.headers["content-type"] == get.headers["content-type"]
    assert client.head("/predict").status_code == 405  # POST only, as GET /predict


def test_host_header_must_name_this_server(client, server):
    port = server.url.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", f"192.168.1.20:{port}"):
        assert client.get("/health", headers={"Host": host}).status_code == 200, host
    r = client.get("/health", headers={"Host": f"attacker.example:{port}"})  # DNS rebinding: a name of theirs
    assert r.status_code == 400 and "attacker.example" in r.json()["error"] and "--allowed-hosts" in r.json()["error"]
    r = client.post("/predict", content=b"x", headers={"Host": "attacker.example", "Content-Type": "image/png"})
    assert r.status_code == 400


def test_model_card_shows_no_local_paths(client, classifier):
    shown = client.get("/model").json()
    assert "run" not in shown["source"] and str(classifier.card["source"]["run"]) not in json.dumps(shown)
    assert shown["source"]["checkpoint_sha256"] == classifier.card["source"]["checkpoint_sha256"]
    assert shown["files"] == classifier.card["files"]


@pytest.fixture(scope="module")
def strict_server(fast_export):
    """`serve.serve` with short limits, so tests can watch them act: 2 s for headers and bodies, 8 connections."""
    from digitpi.bench.server import free_port, wait_healthy

    port = free_port()
    code = ("from digitpi import serve\n"
            f"serve.serve(serve.ServeConfig(model_dir={str(fast_export)!r}, port={port}, header_timeout=2.0,"
            " body_timeout=2.0, keep_alive=1, max_connections=8, allowed_hosts=('digits.example.org',)),"
            " log_level='warning')\n")
    process = subprocess.Popen([sys.executable, "-c", code])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield url, port
    finally:
        process.terminate()
        process.wait(timeout=10)


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes `sock` within `seconds` (reading until EOF)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except OSError:  # reset: closed too
        pass
    return True


def test_idle_and_slow_connections_are_closed(strict_server, mnist_test):
    url, port = strict_server
    idle = socket.create_connection(("127.0.0.1", port))
    slow = socket.create_connection(("127.0.0.1", port))
    slow.sendall(b"POST /predict HTTP/1.1\r\nHost: localhost\r\n")  # headers begun, never finished
    assert closed_within(idle, 6) and closed_within(slow, 6)
    body = socket.create_connection(("127.0.0.1", port))  # headers complete, body never finished
    body.sendall(b"POST /predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n"
                 b"\r\n\x89PNG")
    body.settimeout(6)
    answer = b""
    while chunk := body.recv(4096):  # until the server closes it
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 408") and b'{"error":' in answer
    with httpx.Client(base_url=url, timeout=30) as client:
        assert_still_serving(client, mnist_test)


def test_connections_over_the_cap_close_the_oldest_idle_one(strict_server, mnist_test):
    url, port = strict_server
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
    with httpx.Client(base_url=url, timeout=30) as client:
        assert_still_serving(client, mnist_test)  # a ninth connection, with a request: served
    assert closed_within(idle[0], 1)  # made room for it
    for sock in idle:
        sock.close()


@pytest.mark.parametrize("request_bytes", [
    b"POST /predict HTTP/1.1\r\nHost: localhost\r\nContent-Length: -1\r\n\r\n",
    b"POST /predict HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 a TLS hello\r\n\r\n",
    b"GET /he\x00alth HTTP/1.1\r\nHost: localhost\r\n\r\n",
])
def test_a_request_that_cannot_be_parsed_gets_a_json_400(strict_server, mnist_test, request_bytes):
    url, port = strict_server
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request_bytes)
        sock.settimeout(6)
        answer = b""
        while chunk := sock.recv(4096):  # until the server closes it
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"content-type: application/json" in head.lower()
    assert "error" in json.loads(body)
    with httpx.Client(base_url=url, timeout=30) as client:
        assert_still_serving(client, mnist_test)


def test_allowed_hosts_adds_names(strict_server):
    url, _ = strict_server
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/health", headers={"Host": "digits.example.org"}).status_code == 200
        assert client.get("/health", headers={"Host": "other.example.org"}).status_code == 400


def test_bad_port_is_one_line(fast_export):
    done = run_cli("serve", "--model", str(fast_export), "--port", "99999")
    assert done.returncode == 2 and done.stderr == "digitpi: error: --port must be between 0 and 65535, got 99999\n"


def test_float_tiff_of_one_row_is_answered(client):
    """A 2850x1 float TIFF: once a 500."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).random((1, 2850), dtype=np.float32), "F").save(buffer, format="TIFF")
    r = client.post("/predict", content=buffer.getvalue(), headers={"Content-Type": "image/tiff"})
    assert r.status_code in (200, 415, 422) and r.headers["content-type"] == "application/json"


@pytest.mark.slow  # a minute or more: worst-case pictures decoded whole, connections held
def test_bench_serve_hostile(strict_server):
    url, _ = strict_server
    result = run_cli("bench", "serve", "--url", url, "-n", "40", "-c", "4", "--hostile", "--idle", "20",
                     "--slow", "5", "--hold", "8", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    hostile = report["hostile"]
    assert report["errors"] == hostile["worst_pictures"]["errors"] == hostile["under_held_connections"]["errors"] == 0
    assert hostile["worst_pictures"]["statuses"]["415"] == 4  # the 9400x9400 RGBA PNG, refused each time
    assert hostile["held"]["opened"] == 25 and len(hostile["held"]["closed_after"]) == 25  # all closed by the server
    memory = hostile["memory"]
    assert 0 < memory["idle_mb"] <= memory["peak_mb"] and memory["after_mb"] > 0  # found the server by its port
