"""What a careless or hostile client sends a Pi: worst-case pictures and connections that never
finish a request. For `digitpi bench serve --hostile` and the tests.

The pictures are the largest each kind of file can be within a decode budget (`digitpi serve`'s,
or `preprocess.Settings.decode_budget`), decoded whole: the costliest accepted input; and one far
beyond it, a 9400x9400 RGBA PNG, tiny as a file (a few hundred KB) but 674 MB on the way to grey.
PNGs are written row by row, so making one never holds its pixels. numpy and Pillow only: this runs
on the Pi too.
"""

from __future__ import annotations

import io
import math
import socket
import struct
import threading
import time
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from digitpi import preprocess

PNG_TYPES = {"L": (0, 1), "RGB": (2, 3), "RGBA": (6, 4)}  # mode -> (PNG colour type, bytes per pixel)


def png_stream(width: int, height: int, mode: str = "RGBA") -> bytes:
    """A valid PNG of a thick dark vertical stroke (a "1") on light or transparent paper, encoded
    row by row: two distinct rows, so the file is small whatever its size in pixels."""
    colour_type, depth = PNG_TYPES[mode]
    paper = {"L": b"\xff", "RGB": b"\xff\xff\xff", "RGBA": b"\xff\xff\xff\x00"}[mode]
    ink = {"L": b"\x00", "RGB": b"\x00\x00\x00", "RGBA": b"\x00\x00\x00\xff"}[mode]
    left, right = int(width * 0.45), int(width * 0.55)
    blank = b"\x00" + paper * width  # filter byte 0, then the pixels
    stroke = b"\x00" + paper * left + ink * (right - left) + paper * (width - right)
    packer = zlib.compressobj(9)
    chunks = []
    for y in range(height):
        chunks.append(packer.compress(stroke if 0.2 * height <= y < 0.8 * height else blank))
    chunks.append(packer.flush())

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(chunks)) + chunk(b"IEND", b"")


def progressive_jpeg(side: int) -> bytes:
    """A grey progressive JPEG `side` px square: decoded from whole-image coefficient tables whatever
    the scale, so it costs its full size even when drafted."""
    image = np.full((side, side), 235, np.uint8)
    image[side // 5:4 * side // 5, 9 * side // 20:11 * side // 20] = 20
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", progressive=True, quality=75)
    return buffer.getvalue()


def side_within(budget: int, bytes_per_pixel: float) -> int:
    """The largest square side whose decode costs at most `budget` bytes."""
    return math.isqrt(int(budget / bytes_per_pixel))


def worst_pictures(budget: int = preprocess.SETTINGS.decode_budget) -> dict[str, bytes]:
    """Name -> file bytes: the largest picture of each costly kind a decode budget of `budget` bytes
    accepts, and one it refuses."""
    rgba, rgb = side_within(budget, preprocess.PEAK_BYTES["RGBA"]), side_within(budget, 4)
    jpeg = side_within(budget * 0.9, 2)  # 2 bytes per coefficient, one component; the drafted image besides
    return {
        "9400x9400 RGBA PNG (refused)": png_stream(9400, 9400, "RGBA"),
        f"{rgba}x{rgba} RGBA PNG": png_stream(rgba, rgba, "RGBA"),
        f"{rgb}x{rgb} RGB PNG": png_stream(rgb, rgb, "RGB"),
        f"{jpeg}x{jpeg} progressive JPEG": progressive_jpeg(jpeg),
    }


# ---------------------------------------------------------------- connections that never finish a request


@dataclass
class Held:
    """Sockets opened against a server and what became of them."""

    opened: int
    closed_after: list[float]  # seconds from opening to the server closing each one that it closed
    refused: int  # answered 503 at once (the server's connection cap, every one busy)


def hold(host: str, port: int, idle: int, slow: int, seconds: float) -> Held:
    """Open `idle` connections that send nothing and `slow` ones that send a request's headers a
    byte a second (slowloris); watch for `seconds` which ones the server closes, and when."""
    sockets: list[socket.socket] = []
    opened_at: list[float] = []
    for i in range(idle + slow):
        try:
            sock = socket.create_connection((host, port), timeout=5)
        except OSError:
            break
        sock.setblocking(False)
        sockets.append(sock)
        opened_at.append(time.monotonic())
        if i >= idle:
            sock.send(b"P")
    header = b"POST /predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\nX-Slow: "
    closed: dict[int, float] = {}
    refused = 0
    position = 1
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(closed) < len(sockets):
        for i, sock in enumerate(sockets):
            if i in closed:
                continue
            try:
                answer = sock.recv(4096)
            except BlockingIOError:
                if i >= idle:  # one more byte of a request that never ends
                    try:
                        sock.send(header[position % len(header):position % len(header) + 1] or b"a")
                    except OSError:
                        closed[i] = time.monotonic() - opened_at[i]
                continue
            except OSError:
                answer = b""
            refused += answer.startswith(b"HTTP/1.1 503")
            closed[i] = time.monotonic() - opened_at[i]
        position += 1
        time.sleep(1.0 if slow else 0.2)
    for sock in sockets:
        sock.close()
    return Held(len(sockets), sorted(closed.values()), refused)


def hold_in_background(host: str, port: int, idle: int, slow: int, seconds: float) -> tuple[threading.Thread, list]:
    """`hold` in a thread; the list receives its `Held` when it ends."""
    result: list[Held] = []
    thread = threading.Thread(target=lambda: result.append(hold(host, port, idle, slow, seconds)), daemon=True)
    thread.start()
    return thread, result
