"""`digitpi serve --collect`: labelled digits kept in a real SQLite file by a real server over real HTTP.

Off unless asked (403, nothing written); on, a posted digit is in the database with every field the
runtime gives for the same picture; and a server killed with SIGKILL while it writes loses no sample
it had acknowledged, and leaves a database that opens and passes SQLite's integrity check.
"""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from digitpi import reading, samples
from digitpi.bench.server import launch
from digitpi.exportdir import DEFAULT_PRECISION, variant

PICKS = np.arange(0, 10_000, 311)  # 33 test digits spread over the test set


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def test_collecting_is_off_unless_asked(fast_export, tmp_path, mnist_test):
    data_home = tmp_path / "data"
    with launch(fast_export, env={"XDG_DATA_HOME": str(data_home)}) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/health").json()["collect"] is False
        r = client.post("/samples?label=3", content=png(mnist_test[0][0]), headers={"Content-Type": "image/png"})
        assert r.status_code == 403 and "--collect" in r.json()["error"]
        r = client.get("/samples/stats")
        assert r.status_code == 403 and "--collect" in r.json()["error"]
    assert not data_home.exists()  # nothing written anywhere


def test_samples_without_collect_is_a_one_line_error(fast_export, tmp_path, capsys):
    from digitpi.cli import main

    assert main(["serve", "--model", str(fast_export), "--samples", str(tmp_path / "s.db")]) == 2
    assert "add --collect" in capsys.readouterr().err
    assert not (tmp_path / "s.db").exists()


@pytest.fixture(scope="module")
def collecting(fast_export, tmp_path_factory):
    db = tmp_path_factory.mktemp("collect") / "samples.db"
    with launch(fast_export, args=["--collect", "--samples", str(db)]) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        yield client, db


def test_a_posted_sample_is_in_the_database_with_its_fields(collecting, fast_export, mnist_test):
    from digitpi.runtime import Classifier

    client, db = collecting
    classifier = Classifier.load(fast_export)
    card_sha = classifier.card["files"][variant(DEFAULT_PRECISION, classifier.backend_name).file]["sha256"]
    images, labels = mnist_test
    before = client.get("/samples/stats").json()
    posted = {}
    for i in PICKS[:10]:
        picture = png(images[i])
        r = client.post(f"/samples?label={labels[i]}&origin=correction", content=picture,
                        headers={"Content-Type": "image/png"})
        assert r.status_code == 201, r.text
        posted[r.json()["id"]] = (picture, int(labels[i]), r.json())
    # a multipart form, as a browser's form would send it
    r = client.post("/samples", params={"label": 4, "origin": "teach"}, files={"file": ("d.png", png(images[4]))})
    assert r.status_code == 201 and r.json()["label"] == 4

    stats = client.get("/samples/stats").json()
    assert stats["total"] == before["total"] + 11
    assert sum(stats["model_read"]) == sum(before["model_read"]) + 11  # the server read each one
    with samples.SampleStore(db, create=False) as store:
        stored = {s.id: s for s in store.samples(ids=list(posted))}
    for sample_id, (picture, label, answer) in posted.items():
        s = stored[sample_id]
        (digit,) = reading.read(classifier, picture).digits
        image, predicted, probabilities = digit.image, digit.index, digit.probabilities
        assert s.picture == picture and s.picture_format == "PNG" and s.label == label and s.origin == "correction"
        np.testing.assert_array_equal(s.input, image)
        assert s.predicted == predicted == answer["predicted"]
        np.testing.assert_allclose(s.probabilities, probabilities, atol=1e-5)
        assert s.model_sha256 == card_sha
        age = time.time() - time.mktime(time.strptime(s.created[:19], "%Y-%m-%dT%H:%M:%S")) + time.timezone
        assert 0 <= age < 600


@pytest.mark.parametrize("query,body,status,words", [
    ("label=10", "digit", 422, "label"),
    ("", "digit", 422, "label"),
    ("label=3&origin=guess", "digit", 422, "origin must be"),
    ("label=3", b"not a picture", 415, "not an image"),
    ("label=3", np.zeros((28, 28), np.uint8), 422, "no digit"),
])
def test_bad_samples_get_a_4xx_and_nothing_is_stored(collecting, mnist_test, query, body, status, words):
    client, _ = collecting
    before = client.get("/samples/stats").json()["total"]
    content = png(mnist_test[0][0]) if isinstance(body, str) else png(body) if isinstance(body, np.ndarray) else body
    r = client.post(f"/samples?{query}", content=content, headers={"Content-Type": "image/png"})
    assert r.status_code == status and words in r.json()["error"]
    assert client.get("/samples/stats").json()["total"] == before


def test_a_database_locked_by_another_program_is_a_503_and_predictions_go_on(collecting, mnist_test):
    """A sqlite3 shell left in a transaction on the server's database: corrections wait for it (5 s),
    then answer 503 with a message; meanwhile /predict answers, and once the lock goes, samples are kept."""
    client, db = collecting
    picture = png(mnist_test[0][0])
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    finished: list[tuple[str, int, dict]] = []

    def post(path: str) -> None:
        r = client.post(path, content=picture, headers={"Content-Type": "image/png"})
        finished.append((path, r.status_code, r.json()))

    try:
        waiting = [threading.Thread(target=post, args=("/samples?label=7",)) for _ in range(6)]  # 3x the decoders
        for t in waiting:
            t.start()
        time.sleep(1)
        post("/predict")
        for t in waiting:
            t.join(timeout=60)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert [path for path, *_ in finished] == ["/predict"] + ["/samples?label=7"] * 6
    assert finished[0][1] == 200
    assert all(status == 503 and "locked" in body["error"] for _, status, body in finished[1:])
    r = client.post("/samples?label=7", content=picture, headers={"Content-Type": "image/png"})
    assert r.status_code == 201
    twice = [client.post("/samples?label=7", content=picture, headers={"Content-Type": "image/png"}) for _ in range(2)]
    assert [r.status_code for r in twice] == [201, 201]  # the same picture again: kept again (another time)


def test_sigkill_while_writing_loses_no_acknowledged_sample(fast_export, tmp_path, mnist_test):
    """A Pi losing power mid-write, as near as a process can come: the server killed with SIGKILL
    while four clients post samples. Every sample it answered 201 for must be there afterwards."""
    db = tmp_path / "samples.db"
    images, labels = mnist_test
    pictures = [(png(images[i]), int(labels[i])) for i in PICKS]
    acknowledged: list[int] = []
    stop = threading.Event()

    def post_until_killed(client: httpx.Client, offset: int) -> None:
        k = offset
        while not stop.is_set():
            picture, label = pictures[k % len(pictures)]
            k += 1
            try:
                r = client.post(f"/samples?label={label}", content=picture, headers={"Content-Type": "image/png"})
            except httpx.HTTPError:
                return  # the server is gone
            if r.status_code == 201:
                acknowledged.append(r.json()["id"])

    with launch(fast_export, args=["--collect", "--samples", str(db)]) as server:
        clients = [httpx.Client(base_url=server.url, timeout=10) for _ in range(4)]
        threads = [threading.Thread(target=post_until_killed, args=(c, 7 * i)) for i, c in enumerate(clients)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while len(acknowledged) < 60 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(server.pid, signal.SIGKILL)  # mid-stream: requests are in flight
        stop.set()
        for t in threads:
            t.join(timeout=30)
        for c in clients:
            c.close()
    assert len(acknowledged) >= 60

    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    raw.close()
    with samples.SampleStore(db, create=False) as store:
        ids = {row["id"] for row in store.listing()}
        assert set(acknowledged) <= ids
        assert store.count() >= len(acknowledged)
        assert all(s.input.shape == (28, 28) and s.picture for s in store.samples())
        store.add(samples.Sample(label=1, input=images[0], picture=pictures[0][0], picture_format="PNG"))
