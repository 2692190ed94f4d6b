"""`digitpi bench serve`: requests/s and latency of `digitpi serve` under concurrent load; with
`--hostile`, what careless and hostile clients do to it (worst-case pictures, connections that never
finish a request) and the server's memory: idle, at its peak, and after.

Sends N POST /predict requests, C at a time, each from its own keep-alive connection (stdlib
http.client in threads: nothing to install on the Pi), with real MNIST test digits as PNG bodies.
Either against a running server (--url, loopback only: this is a load generator) or against one it
starts itself from --model. Every request must succeed; the count and the wall time are bounded.
Top-level imports stay light: the web stack is imported only by a server started here (`bench.server`).
"""

from __future__ import annotations

import argparse
import http.client
import io
import ipaddress
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass

import numpy as np

from digitpi import UserError
from digitpi.bench.server import launch, listening_pid, memory_mb
from digitpi.exportdir import PRECISIONS

MAX_REQUESTS = 100_000  # bound on -n
MAX_CONCURRENCY = 256  # bound on -c
REQUEST_TIMEOUT = 30.0  # seconds per request before it counts as an error
PAYLOAD_DIGITS = 1000  # distinct MNIST test digits cycled through as request bodies
WARMUP_REQUESTS = 32  # sent first and not timed: the model's first runs are slower


@dataclass(frozen=True)
class Payload:
    body: bytes
    content_type: str
    label: int | None  # the true digit, when known: answers are checked for sanity, not scored


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of this benchmark (besides --json)."""
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running server on this machine, e.g. http://127.0.0.1:8000")
    target.add_argument("--model", metavar="DIR", help="start `digitpi serve` on this exported model for the run")
    parser.add_argument("--precision", choices=PRECISIONS, help="with --model: which model to serve")
    parser.add_argument("-n", "--requests", type=int, default=2000, help="requests to send (default: 2000)")
    parser.add_argument("-c", "--concurrency", type=int, default=16, help="requests in flight (default: 16)")
    parser.add_argument("--image", metavar="FILE", help="send this image every time (default: MNIST test digits)")
    parser.add_argument("--data-dir", help="folder holding the MNIST IDX files")
    parser.add_argument("--time-limit", type=float, default=300.0, help="stop after this many seconds (default: 300)")
    parser.add_argument("--hostile", action="store_true",
                        help="also send worst-case pictures (-c at a time), and repeat the load while --idle and "
                             "--slow connections are held; report errors, p99 and the server's memory")
    parser.add_argument("--idle", type=int, default=300, help="--hostile: connections that send nothing (default: 300)")
    parser.add_argument("--slow", type=int, default=100,
                        help="--hostile: connections that send their headers a byte a second (default: 100)")
    parser.add_argument("--hold", type=float, default=30.0,
                        help="--hostile: seconds the idle and slow connections are kept open and watched "
                             "(default: 30, three times the server's header timeout)")


def check_loopback(url: str) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise UserError(f"--url must look like http://127.0.0.1:8000, not {url!r}")
    host = parts.hostname
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise UserError(f"--url must point at this machine (127.0.0.1, ::1 or localhost), not {host}")
    return parts


def mnist_payloads(data_dir: str | None, count: int = PAYLOAD_DIGITS) -> list[Payload]:
    """The first `count` MNIST test digits, each encoded as a 28x28 PNG."""
    from PIL import Image

    from digitpi import data

    images, labels = data.load_split("mnist", "test", data_dir)
    payloads = []
    for image, label in zip(images[:count], labels[:count]):
        buffer = io.BytesIO()
        Image.fromarray(image, mode="L").save(buffer, format="PNG")
        payloads.append(Payload(buffer.getvalue(), "image/png", int(label)))
    return payloads


def file_payload(path: str) -> list[Payload]:
    try:
        with open(path, "rb") as f:
            return [Payload(f.read(), "application/octet-stream", None)]
    except OSError as e:
        raise UserError(f"cannot read --image {path}: {e.strerror}") from None


def load(url: str, payloads: list[Payload], requests: int, concurrency: int, time_limit: float,
         expected: tuple[int, ...] = (200,)) -> dict:
    """Send `requests` POST /predict, `concurrency` at a time; latencies in ms, errors counted: any
    status not in `expected` (a worst-case picture may be refused with a 4xx), or no answer."""
    parts = check_loopback(url)
    lock = threading.Lock()
    next_index = 0
    latencies: list[float] = []
    model_ms: list[float] = []
    errors: list[str] = []
    statuses: dict[int, int] = {}
    correct = checked = 0
    deadline = time.monotonic() + time_limit

    def take() -> int | None:
        nonlocal next_index
        with lock:
            if next_index >= requests or time.monotonic() > deadline:
                return None
            next_index += 1
            return next_index - 1

    def worker() -> None:
        nonlocal correct, checked
        connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=REQUEST_TIMEOUT)
        while (i := take()) is not None:
            payload = payloads[i % len(payloads)]
            start = time.perf_counter()
            try:
                connection.request("POST", "/predict", body=payload.body,
                                   headers={"Content-Type": payload.content_type})
                response = connection.getresponse()
                body = response.read()
                elapsed = 1000 * (time.perf_counter() - start)
                if response.status not in expected:
                    raise RuntimeError(f"HTTP {response.status}: {body[:200].decode(errors='replace')}")
                answer = json.loads(body)
            except (OSError, http.client.HTTPException, RuntimeError, ValueError) as e:
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
                connection.close()  # a broken connection is reopened by the next request
                continue
            with lock:
                latencies.append(elapsed)
                statuses[response.status] = statuses.get(response.status, 0) + 1
                if response.status != 200:
                    continue
                model_ms.append(answer["timing"]["model_ms"])
                if payload.label is not None:
                    checked += 1
                    correct += answer["digit"] == payload.label
        connection.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {
        "url": url, "requests": len(latencies) + len(errors), "concurrency": concurrency, "errors": len(errors),
        "first_errors": errors[:5], "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "seconds": round(wall, 3),
        "requests_per_s": round(len(latencies) / wall, 1) if wall > 0 else None,
        "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 2), "p90": round(float(np.percentile(lat, 90)), 2),
                       "p99": round(float(np.percentile(lat, 99)), 2), "max": round(float(lat.max()), 2)},
        "server_model_ms_p50": round(float(np.median(model_ms)), 3) if model_ms else None,
        "accuracy": round(correct / checked, 4) if checked else None,
        "stopped_by_time_limit": len(latencies) + len(errors) < requests,
    }


def format_result(r: dict) -> str:
    lat = r["latency_ms"]
    rows = [
        ("server", r["url"]),
        ("requests", f"{r['requests']} at concurrency {r['concurrency']} in {r['seconds']:.2f} s"
                     + (" (stopped by --time-limit)" if r["stopped_by_time_limit"] else "")),
        ("errors", str(r["errors"])),
        ("throughput", f"{r['requests_per_s']} requests/s"),
        ("latency p50", f"{lat['p50']:.2f} ms"),
        ("latency p90", f"{lat['p90']:.2f} ms"),
        ("latency p99", f"{lat['p99']:.2f} ms"),
        ("latency max", f"{lat['max']:.2f} ms"),
        ("model time p50", f"{r['server_model_ms_p50']} ms (inside the server)"),
    ]
    if r["accuracy"] is not None:
        rows.append(("answers correct", f"{100 * r['accuracy']:.2f} % (sanity check on MNIST test digits)"))
    rows += [("first error", e) for e in r["first_errors"][:3]]
    return "\n".join(f"{name:<16} {value}" for name, value in rows)


HOSTILE_ROUNDS = 4  # each worst-case picture is sent this many times
MAX_HELD = 2000  # bound on --idle + --slow: each is a file descriptor of this process


def hostile(url: str, pid: int | None, payloads: list[Payload], args: argparse.Namespace) -> dict:
    """The hostile phases against a warmed-up server: worst-case pictures, then the normal load again
    while idle and slow connections are held; the server's memory before, at its peak and after."""
    from digitpi.bench import hostile as attacks

    memory = {"idle_mb": memory_mb(pid) if pid else None}
    from digitpi.serve import ServeConfig  # the server's own budget, as `digitpi serve` sets it

    files = attacks.worst_pictures(ServeConfig.decode_budget)
    worst = [Payload(body, "image/jpeg" if "JPEG" in name else "image/png", None) for name, body in files.items()]
    pictures = load(url, worst, HOSTILE_ROUNDS * len(worst), args.concurrency, args.time_limit,
                    expected=(200, 415, 422))
    parts = urllib.parse.urlsplit(url)
    thread, held = attacks.hold_in_background(parts.hostname, parts.port, args.idle, args.slow, args.hold)
    time.sleep(2.0)  # the connections are open before the load starts
    crowded = load(url, payloads, args.requests, args.concurrency, args.time_limit)
    thread.join()
    time.sleep(2.0)  # what the server keeps once the last answer is sent
    memory |= {"peak_mb": memory_mb(pid, "VmHWM") if pid else None, "after_mb": memory_mb(pid) if pid else None}
    return {"pictures_kb": {name: round(len(body) / 1024) for name, body in files.items()}, "worst_pictures": pictures,
            "under_held_connections": crowded, "held": vars(held[0]) if held else None, "memory": memory}


def format_hostile(normal: dict, r: dict, args: argparse.Namespace) -> str:
    def row(name: str, x: dict) -> str:
        statuses = ", ".join(f"{k}: {v}" for k, v in x["statuses"].items())
        return (f"| {name} | {x['requests']} | {x['errors']} | {x['latency_ms']['p50']:.0f} | "
                f"{x['latency_ms']['p99']:.0f} | {statuses} |")

    memory, held = r["memory"], r["held"]

    def mb(key: str) -> str:
        return f"{memory[key]:.0f} MB" if memory[key] is not None else "n/a"

    closed = held["closed_after"]
    lines = ["| phase | requests | errors | p50 ms | p99 ms | answers |", "| --- | ---: | ---: | ---: | ---: | --- |",
             row(f"normal load, {normal['concurrency']} at a time", normal),
             row(f"worst-case pictures, {args.concurrency} at a time", r["worst_pictures"]),
             row(f"normal load with {args.idle} idle + {args.slow} slow connections held", r["under_held_connections"]),
             "",
             "worst-case pictures: " + ", ".join(f"{name} ({kb:,} KB)" for name, kb in r["pictures_kb"].items()),
             f"server memory: idle {mb('idle_mb')}, peak {mb('peak_mb')}, after {mb('after_mb')}",
             f"held connections: {held['opened']} opened, {len(closed)} closed by the server within "
             f"{args.hold:.0f} s" + (f" (the last after {closed[-1]:.1f} s)" if closed else "")
             + f", {held['refused']} refused at once"]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    if not 1 <= args.requests <= MAX_REQUESTS:
        raise UserError(f"-n must be between 1 and {MAX_REQUESTS}")
    if not 1 <= args.concurrency <= MAX_CONCURRENCY:
        raise UserError(f"-c must be between 1 and {MAX_CONCURRENCY}")
    if args.time_limit <= 0:
        raise UserError("--time-limit must be positive")
    if args.hostile and (min(args.idle, args.slow) < 0 or args.idle + args.slow > MAX_HELD or args.hold <= 0):
        raise UserError(f"--idle and --slow must be 0 to {MAX_HELD} connections in all, --hold positive")
    if args.url:
        check_loopback(args.url)
    payloads = file_payload(args.image) if args.image else mnist_payloads(args.data_dir)

    def measure(url: str, pid: int | None) -> dict:
        load(url, payloads, min(WARMUP_REQUESTS, args.requests), min(args.concurrency, WARMUP_REQUESTS), 60.0)
        result = load(url, payloads, args.requests, args.concurrency, args.time_limit)
        return result | ({"hostile": hostile(url, pid, payloads, args)} if args.hostile else {})

    if args.url:
        url = args.url.rstrip("/")
        result = measure(url, listening_pid(urllib.parse.urlsplit(url).port or 80))
    else:
        try:
            with launch(args.model, precision=args.precision) as server:
                result = measure(server.url, server.pid)
        except RuntimeError as e:
            raise UserError(f"could not start a server for --model {args.model}: {e}") from None
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_hostile(result, result["hostile"], args) if args.hostile else format_result(result))
    failed = result["errors"] + sum(result.get("hostile", {}).get(k, {}).get("errors", 0)
                                    for k in ("worst_pictures", "under_held_connections"))
    if failed:
        raise UserError(f"{failed} requests failed")
