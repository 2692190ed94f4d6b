"""`digitpi serve`: a drawing page and an HTTP API that read digits with an exported model.

Runs on the Raspberry Pi: imports only the runtime (numpy, Pillow, onnxruntime) and the web stack
(FastAPI, uvicorn), never torch. The model is loaded (and checked, `Classifier.load`) once, at
startup; requests only preprocess and run it. `httpguard` keeps the network's excesses out: request
bodies over `MAX_BODY_BYTES` or slower than `ServeConfig.body_timeout`, connections beyond
`max_connections` or slower than `header_timeout` to send their headers, Host names that are not
this server's. At most `ServeConfig.decoders` pictures are decoded at once, each within
`ServeConfig.decode_budget`, so memory stays bounded however many requests arrive.

With `--collect` it also keeps the digits a user labels ("it's a 4", the page's teach round) in a
samples database (`digitpi.samples`): `POST /samples`, `GET /samples/stats`. Without it those
routes answer 403 and nothing is written.

Errors are always JSON `{"error": "..."}` with a 4xx status, and never stop the server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import dataclasses
import io
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources

import numpy as np
from fastapi import Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from PIL import Image
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from digitpi import UserError, preprocess, reading, samples
from digitpi.contract import NUM_CLASSES
from digitpi.exportdir import variant
from digitpi.httpguard import ApiError, BodyLimit, HeadAsGet, HostCheck, default_hosts, guarded_protocol
from digitpi.runtime import Classifier

API_VERSION = "1"  # of the HTTP API below (OpenAPI info.version): changes when a route or a field does
MAX_BODY_BYTES = 2 * 1024 * 1024  # larger uploads get 413: a 28x28 digit never needs more
RAW_TYPES = ("image/", "application/octet-stream")  # Content-Type prefixes read as raw image bytes
FAVICON = "/favicon.ico"  # where browsers look unasked; an SVG, which they read by its Content-Type


def find_glibc():
    """glibc (Raspberry Pi OS, Debian), whose malloc_trim and mallopt give freed memory back to the system."""
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except (OSError, TypeError):  # another C library (musl, macOS, Windows): nothing to tune
        return None


GLIBC = find_glibc()
M_MMAP_THRESHOLD = -3  # mallopt's parameter (malloc.h)
MMAP_THRESHOLD = 2**20  # blocks from this size up are mapped on their own and unmapped when freed


@dataclass(frozen=True)
class ServeConfig:
    model_dir: str  # an exported model folder (`digitpi export RUN_DIR`)
    host: str = "127.0.0.1"  # localhost only; 0.0.0.0 shows the page to the local network
    port: int = 8000  # TCP port of the page and the API
    precision: str | None = None  # "int8" or "fp32"; None takes the runtime's default
    backend: str = "auto"  # what runs the model: auto (onnxruntime where it runs, else NumPy) | onnxruntime | numpy
    allowed_hosts: tuple[str, ...] = ()  # Host names besides localhost (and the machine's own name off loopback)
    header_timeout: float = 10.0  # s from a connection (or its last answer) to a request's full headers
    body_timeout: float = 30.0  # s from a request's headers to the end of its body (2 MB at 70 KB/s)
    keep_alive: int = 5  # s an idle connection stays open after an answer
    max_connections: int = 128  # open at once; a Pi's `ulimit -n` is 1,024 descriptors
    decoders: int = 2  # pictures decoded at once: with decode_budget, what bounds the server's memory
    decode_budget: int = 32 * 2**20  # bytes one picture may take decoded (preprocess.Settings): two at once keep
    # the server (~100 MB idle) under the MemoryHigh=200M `digitpi service` sets; uploads are 2 MB at most,
    # and photos (JPEG) are decoded reduced, so only a synthetic PNG of over 8 MP (RGB) is refused for it
    collect: bool = False  # keep labelled digits (POST /samples) for fine-tuning; off: those routes answer 403
    samples: str | None = None  # the samples database --collect writes; None: samples.default_path()


# ---------------------------------------------------------------- response schemas (also the OpenAPI schema)


class Timing(BaseModel):
    decode_ms: float = Field(description="reading the upload and preprocessing it to 28x28")
    model_ms: float = Field(description="running the model")
    total_ms: float = Field(description="from the first byte of the body to the answer")


class Reading(BaseModel):
    digit: int = Field(description="the most probable digit, 0-9")
    confidence: float = Field(description="its probability")
    probabilities: list[float] = Field(description="probability of each digit 0-9")
    input_png: str = Field(description="the 28x28 image the model saw, as a data: URL (PNG, white ink on black)")


class Prediction(Reading):
    timing: Timing


class PlacedReading(Reading):
    box: list[int] = Field(description="where the digit is: left, top, right, bottom (exclusive) in the pixels of "
                                       "the picture as sent, upright (EXIF orientation applied)")


class Line(BaseModel):
    text: str = Field(description="the digits of one written line, left to right")
    digits: list[PlacedReading]


class MultiPrediction(BaseModel):
    text: str = Field(description="the digits read, one written line per text line")
    lines: list[Line] = Field(description="the written lines, top to bottom")
    timing: Timing


class ErrorBody(BaseModel):
    error: str


class SampleStats(BaseModel):
    total: int = Field(description="samples in the database")
    limit: int = Field(description="samples it may hold")
    per_digit: list[int] = Field(description="samples of each digit 0-9")
    model_read: list[int] = Field(description="of those, how many a model read when they were taken (not imported)")
    model_right: list[int] = Field(description="of those read, how many the model read right")


class SampleSaved(BaseModel):
    id: int = Field(description="the sample's row in the database")
    label: int = Field(description="the digit, as the user says")
    predicted: int = Field(description="what the model read")
    confidence: float = Field(description="the model's probability of `predicted`")
    stats: SampleStats


# ---------------------------------------------------------------- the model and the image pipeline


def png_data_url(image: np.ndarray) -> str:
    """A uint8 28x28 array as a `data:image/png;base64,...` URL the page can show directly."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), mode="L").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def look(data: bytes, multi: bool, s: preprocess.Settings = preprocess.SETTINGS, classifier=None
         ) -> list[list[tuple[np.ndarray, reading.Box | None]]]:
    """Decode an upload into what the model sees (`reading.look`); bad images become ApiErrors:
    422 when the picture is readable but holds no digit, 415 when it is not a picture at all."""
    try:
        return reading.look(data, page=multi, s=s, classifier=classifier)
    except preprocess.ImageError as e:  # unnamed: the upload is the only picture of its request
        raise ApiError(422 if isinstance(e, preprocess.NoDigitError) else 415, str(e)) from None


def map_large_blocks() -> None:
    """Decoded pictures' buffers (1 MB and more) mapped on their own, so freeing one gives it back.
    glibc otherwise raises that threshold to the largest block freed (up to 32 MB), and the worker
    threads' heaps keep their top, which malloc_trim leaves alone: 2,048-px pictures, two at a time,
    left 61 MB behind; with the threshold fixed, 7 MB."""
    if GLIBC is not None:
        GLIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def trim_memory() -> None:
    """Give the memory a decoded picture freed back to the system. glibc keeps each thread's heap at
    its peak: after a few large pictures a server would hold hundreds of MB it no longer uses
    (measured: 298 MB against 93 MB idle). About 2 microseconds when there is nothing to give back."""
    if GLIBC is not None:
        GLIBC.malloc_trim(0)


def answer(digit: reading.Digit) -> dict:
    """A digit as the API answers it (the fields of `Reading`, and `box` when it has one)."""
    fields = {"digit": digit.index, "confidence": digit.probability, "input_png": png_data_url(digit.image),
              "probabilities": [round(float(p), 6) for p in digit.probabilities]}
    return fields | ({"box": list(digit.box)} if digit.box is not None else {})


# ---------------------------------------------------------------- HTTP


def static_file(name: str) -> bytes:
    """A file of the page, from the installed package."""
    return resources.files("digitpi").joinpath("static", name).read_bytes()


PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "description": f"an image (PNG, JPEG, ...), at most {MAX_BODY_BYTES // 1024} KiB: raw bytes or a "
                       "multipart form field (any name)",
        "content": {
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {"schema": {"type": "object",
                                               "properties": {"file": {"type": "string", "format": "binary"}}}},
        },
    }
}
ERRORS = {status: {"model": ErrorBody, "description": text} for status, text in {
    400: "empty body or no file in the form", 413: f"body over {MAX_BODY_BYTES // 1024} KiB",
    415: "not an image", 422: "no digit found in the image"}.items()}


async def read_upload(request: Request) -> bytes:
    """The image bytes of a raw body or of the first file in a multipart form."""
    content_type = request.headers.get("content-type", "application/octet-stream").lower()
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        try:
            files = [v for v in form.values() if hasattr(v, "read")]
            if not files:
                raise ApiError(400, "the form holds no file: send the image as a file field")
            data = await files[0].read()
        finally:
            await form.close()
    elif content_type.startswith(RAW_TYPES):
        data = await request.body()
    else:
        raise ApiError(415, f"unsupported Content-Type {content_type.split(';')[0]}: send image/* bytes, "
                            "application/octet-stream or multipart/form-data")
    if not data:
        raise ApiError(400, "empty body: send an image")
    return data


# A correction waits 5 s at most for another program's lock on the samples database (a sqlite3 shell left in a
# transaction), then answers 503: the page's user is waiting, where `digitpi samples import` may wait 30.
SERVER_LIMITS = samples.Limits(busy_seconds=5.0)
SAMPLE_ERRORS = {**ERRORS, 403: {"model": ErrorBody, "description": "collecting is off: `digitpi serve --collect`"},
                 409: {"model": ErrorBody, "description": "the samples database is full"},
                 503: {"model": ErrorBody, "description": "the samples database failed: damaged, or locked by "
                                                          "another program"}}


def model_sha256(classifier) -> str | None:
    """The SHA-256 of the model file that answers, as its model card lists it."""
    try:
        file = variant(classifier.precision, classifier.backend_name).file
        return classifier.card["files"][file]["sha256"]
    except (AttributeError, KeyError, StopIteration):
        return None


def stats_body(store: samples.SampleStore) -> SampleStats:
    stats = store.stats()
    return SampleStats(**{k: stats[k] for k in SampleStats.model_fields})


def public_card(card: dict) -> dict:
    """The card as `GET /model` shows it: without the PC's paths (the run folder it was exported from,
    an ensemble's list of them)."""

    def is_path(v) -> bool:
        return isinstance(v, str) and os.path.isabs(v) or isinstance(v, list) and any(map(is_path, v))

    source = {k: v for k, v in card.get("source", {}).items() if not is_path(v)}
    return {**card, "source": source} if "source" in card else dict(card)


def create_app(classifier, cfg: ServeConfig | None = None, limit: int = MAX_BODY_BYTES,
               store: samples.SampleStore | None = None):
    """The page and the API around one loaded classifier (anything with `.predict` and `.card`),
    behind `httpguard`'s middleware with `cfg`'s limits (`limit=0`: no body limit); `store` given,
    labelled digits are kept in it (`--collect`)."""
    cfg = cfg or ServeConfig(model_dir="")
    map_large_blocks()
    card = public_card(classifier.card)
    decoding = asyncio.Semaphore(cfg.decoders)
    keeping = asyncio.Semaphore(cfg.decoders)  # corrections waiting on a locked database hold no more threads
    settings = dataclasses.replace(preprocess.SETTINGS, decode_budget=cfg.decode_budget)
    # /docs (Swagger UI) and /redoc load their scripts from fastapi-offline's package, not a CDN: a Pi is often
    # offline. No validator badge either: Swagger UI would fetch it from swagger.io.
    app = FastAPIOffline(title="digitpi", version=API_VERSION, favicon_url=FAVICON,
                         swagger_ui_parameters={"validatorUrl": None},
                         description="Reads handwritten digits with a model exported by `digitpi export`.")
    page, icon = static_file("index.html").decode("utf-8"), static_file("favicon.svg")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        unread = e.status in (408, 413)  # the rest of the body is not read: the connection cannot carry on
        return JSONResponse({"error": e.message}, status_code=e.status,
                            headers={"Connection": "close"} if unread else None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError):
        first = e.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid')}"}, status_code=422)

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception):
        return JSONResponse({"error": f"internal error: {type(e).__name__}"}, status_code=500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(page)

    @app.get(FAVICON, include_in_schema=False)
    async def favicon():
        return Response(icon, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    @app.get("/health", summary="is the server up, and what it runs")
    async def health():
        return {"status": "ok", "model": card.get("model"), "precision": getattr(classifier, "precision", None),
                "backend": getattr(classifier, "backend_name", None), "collect": store is not None}

    @app.get("/model", summary="the model card (model.json of the exported model, without local paths)")
    async def model():
        return card

    @app.post("/predict", summary="read a digit, or with ?multi=1 every digit of a page, line by line",
              response_model=Prediction | MultiPrediction, responses=ERRORS, openapi_extra=PREDICT_BODY)
    async def predict(request: Request, multi: bool = False):
        start = time.perf_counter()
        data = await read_upload(request)

        def work():
            try:
                seen = look(data, multi, settings, classifier)
            finally:
                trim_memory()
            decoded = time.perf_counter()
            page = reading.classify(classifier, seen)
            return page, decoded, time.perf_counter()

        async with decoding:  # waiting requests hold neither a thread nor a decoded picture
            page, decoded, done = await run_in_threadpool(work)
        timing = Timing(decode_ms=round(1000 * (decoded - start), 3), model_ms=round(1000 * (done - decoded), 3),
                        total_ms=round(1000 * (time.perf_counter() - start), 3))
        if multi:
            lines = [Line(text=reading.line_text(line), digits=[PlacedReading(**answer(d)) for d in line])
                     for line in page.lines]
            return MultiPrediction(text=page.text, lines=lines, timing=timing)
        return Prediction(**answer(page.digits[0]), timing=timing)

    # ---------------------------------------------------------------- samples (--collect)

    def collecting() -> samples.SampleStore:
        if store is None:
            raise ApiError(403, "collecting samples is off: start the server with `digitpi serve --collect`")
        return store

    @contextlib.contextmanager
    def stored() -> Iterator[None]:
        """The samples database's refusals as answers: full 409, a bad sample 422, the file failing 503."""
        try:
            yield
        except samples.FullError as e:
            raise ApiError(409, str(e)) from None
        except samples.StoreError as e:
            raise ApiError(503, str(e)) from None
        except samples.SamplesError as e:
            raise ApiError(422, str(e)) from None

    sha256 = model_sha256(classifier)

    @app.post("/samples", status_code=201, response_model=SampleSaved, responses=SAMPLE_ERRORS,
              openapi_extra=PREDICT_BODY, summary="keep a digit with its right label, for fine-tuning (--collect)")
    async def add_sample(request: Request, label: int = Query(ge=0, le=NUM_CLASSES - 1, description="the right digit"),
                         origin: str = Query("api", description=f"one of {', '.join(samples.ORIGINS)}")):
        target = collecting()
        data = await read_upload(request)

        def read() -> samples.Sample:
            try:
                (digit,) = reading.classify(classifier, look(data, False, settings)).digits
                picture, fmt, reduced = samples.capped(data, target.limits)
            finally:
                trim_memory()
            return samples.Sample(label=label, input=digit.image, picture=picture, picture_format=fmt, origin=origin,
                                  predicted=digit.index, probabilities=tuple(map(float, digit.probabilities)),
                                  model_sha256=sha256, picture_reduced=reduced)

        def keep(sample: samples.Sample) -> SampleSaved:
            with stored():
                sample_id = target.add(sample)  # on disk when it returns
                return SampleSaved(id=sample_id, label=label, predicted=sample.predicted,
                                   confidence=round(max(sample.probabilities), 6), stats=stats_body(target))

        async with decoding:  # the same bound on pictures decoded at once as /predict
            sample = await run_in_threadpool(read)
        try:  # waiting on a locked database holds no decoder, and queued corrections no thread
            async with asyncio.timeout(target.limits.busy_seconds):
                await keeping.acquire()
        except TimeoutError:
            raise ApiError(503, f"{target.path}: busy, other corrections wait for it (database is locked?): "
                                "try again") from None
        try:
            return await run_in_threadpool(keep, sample)
        finally:
            keeping.release()

    @app.get("/samples/stats", response_model=SampleStats, responses={403: SAMPLE_ERRORS[403]},
             summary="how many samples each digit has (--collect)")
    async def sample_stats():
        target = collecting()

        def stats() -> SampleStats:
            with stored():
                return stats_body(target)

        return await run_in_threadpool(stats)

    guarded = HostCheck(HeadAsGet(app), [*default_hosts(cfg.host), *cfg.allowed_hosts])
    return BodyLimit(guarded, limit, cfg.body_timeout) if limit else guarded


def serve(cfg: ServeConfig, log_level: str = "info") -> None:
    """Load the model once and serve until interrupted."""
    import uvicorn

    if not 0 <= cfg.port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {cfg.port}")
    if cfg.samples and not cfg.collect:
        raise UserError("--samples names the database --collect writes: add --collect")
    # loaded once; a missing or altered export is a UserError. One onnxruntime thread a request: they run side by side
    classifier = Classifier.load(cfg.model_dir, precision=cfg.precision, backend=cfg.backend)
    store = samples.SampleStore(cfg.samples or samples.default_path(), SERVER_LIMITS) if cfg.collect else None
    try:  # a busy port is a user mistake: say so in one line before uvicorn logs a traceback
        with socket.create_server((cfg.host, cfg.port)):
            pass
    except OSError as e:
        raise UserError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror or e}") from None
    print(f"digitpi: serving {cfg.model_dir} on http://{cfg.host}:{cfg.port}/", file=sys.stderr, flush=True)
    if store is not None:
        print(f"digitpi: collecting samples in {store.path}", file=sys.stderr, flush=True)
    uvicorn.run(create_app(classifier, cfg, store=store), host=cfg.host, port=cfg.port, log_level=log_level,
                access_log=False, http=guarded_protocol(cfg.header_timeout, cfg.max_connections),
                timeout_keep_alive=cfg.keep_alive)
