"""The HTTP API of ``topkrec serve`` (FastAPI): /recommend, /recommend/batch, /health, /model, /docs.

Every request is validated (types are strict: ``"10"`` is not an int; k in 1..1000; history length
and id length bounded; body size bounded) and every client error is a 4xx answer with an ``error``
line saying what to fix; a 500 means a bug in topkrec, never bad input.

Concurrent ``POST /recommend`` calls are scored together: a worker thread takes every request that
is waiting when it becomes free (up to ``max_batch``) and scores them in one ``recommend_batch``
call, so the (n_items × hidden) weight matrix is read once per batch instead of once per request.
There is no artificial wait, so a lone request is answered at once. Seeded exploration requests are
scored on their own, so a seed gives the same answer however requests happen to be grouped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator
from starlette.exceptions import HTTPException

from topkrec.errors import TopkrecError
from topkrec.serve.recommender import MAX_K, MAX_M, Recommendation, Recommender, RecommendOptions

logger = logging.getLogger(__name__)

MAX_ID_CHARS = 256
MAX_SEED = 2**63 - 1

Id = Annotated[str, Field(strict=True, min_length=1, max_length=MAX_ID_CHARS)] | Annotated[int, Field(strict=True)]


@dataclass(frozen=True)
class ServeLimits:
    """Bounds on requests; anything beyond is a 4xx."""

    max_body_bytes: int = 1_000_000
    max_history: int = 1_000
    max_batch_rows: int = 1_000
    max_micro_batch: int = 64
    """Most /recommend requests scored together by the worker."""
    max_explore_work: int = 2_000_000
    """Largest rows × (m − k′)·(k − k′) of one /recommend/batch request with exploration (its cost)."""
    read_timeout_s: float = 30.0
    """Longest wait for the next piece of a request body; a stalled body gets a 408 and the connection closes."""


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    k: Annotated[int, Field(strict=True, ge=1, le=MAX_K)] = 10
    exclude_seen: StrictBool = True
    explore: StrictBool = False
    m: Annotated[int, Field(strict=True, ge=1, le=MAX_M)] = 200
    k_prime: Annotated[int, Field(strict=True, ge=0, le=MAX_K)] | None = None
    temperature: Annotated[float, Field(strict=True, gt=0.0, le=1e6, allow_inf_nan=False)] = 1.0
    seed: Annotated[int, Field(strict=True, ge=0, le=MAX_SEED)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> _Options:
        if self.explore and self.m < self.k:
            raise ValueError(f"m (candidate pool, {self.m}) must be at least k ({self.k}) when explore is true")
        if self.k_prime is not None and self.k_prime > self.k:
            raise ValueError(f"k_prime ({self.k_prime}) must not exceed k ({self.k})")
        return self

    def options(self) -> RecommendOptions:
        return RecommendOptions(
            k=self.k,
            exclude_seen=self.exclude_seen,
            explore=self.explore,
            m=self.m,
            k_prime=self.k_prime,
            temperature=float(self.temperature),
            seed=self.seed,
        )


class RecommendRequest(_Options):
    """The keyword arguments of ``Recommender.recommend``."""

    user: Id | None = None
    history: list[Id] | None = None
    history_events: list[Annotated[str, Field(max_length=200)]] | None = Field(
        None, description="What the user did with each history item (the model's event types, GET /model)."
    )
    candidates: list[Id] | None = Field(None, description="Only these items may be recommended (e.g. ads).")


class BatchRequest(_Options):
    """The keyword arguments of ``Recommender.recommend_batch``: aligned ``users`` and ``histories``."""

    users: list[Id | None] | None = None
    histories: list[list[Id] | None] | None = None
    history_events: list[list[Annotated[str, Field(max_length=200)]] | None] | None = Field(
        None, description="Aligned with histories: each history's event types."
    )
    candidates: list[Id] | None = Field(None, description="Only these items may be recommended, for every row.")


class ItemOut(BaseModel):
    item: str
    score: float
    propensity: float = Field(description="Probability that the serving procedure shows this item.")


class RecommendResponse(BaseModel):
    items: list[ItemOut]
    user_known: bool
    unknown_history_items: list[str]


class BatchResponse(BaseModel):
    results: list[RecommendResponse]


class ErrorResponse(BaseModel):
    error: str
    detail: list[dict[str, Any]] | None = None


# ---------------------------------------------------------------------------------------------------------------------
class ImpressionLog:
    """Appends what was served as JSONL (one row per shown item) with the serving propensity, so the next
    training round can use logged propensities (paper §4.2 loop); ``prepare --format events`` reads it.

    Bounded: when a write would take the file past ``max_bytes`` it is rotated first (``path`` →
    ``path.1`` → … → ``path.<backups>``, the oldest dropped), so the log never holds more than about
    ``(backups + 1) × max_bytes``. ``max_bytes`` 0 turns rotation off. Several server processes may share
    the file: each batch is one ``O_APPEND`` write under an exclusive ``flock``, and a process that finds
    the file rotated by another reopens it.
    """

    def __init__(self, path: Path, max_bytes: int = 100_000_000, backups: int = 5) -> None:
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.backups = max(0, int(backups))
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd: int | None = self._open()
        except OSError as e:
            from topkrec.io import os_error_message

            raise TopkrecError(os_error_message(e, self.path, "open the impressions log")) from e

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _current_fd(self) -> int:
        """The locked descriptor of the file now at ``path`` (reopened if another process rotated it)."""
        import fcntl

        assert self._fd is not None
        while True:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                same = os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return self._fd
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = self._open()

    def _rotate(self) -> None:
        """path → path.1 → … → path.<backups> (the oldest dropped); a fresh path is opened and locked."""
        import fcntl

        assert self._fd is not None
        if self.backups == 0:
            os.ftruncate(self._fd, 0)
            return
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        fresh = self._open()
        fcntl.flock(fresh, fcntl.LOCK_EX)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = fresh

    def write(self, users: list[Any], recs: list[Recommendation], explore: bool) -> None:
        now = int(time.time())
        lines = []
        for user, rec in zip(users, recs, strict=True):
            request_id = uuid.uuid4().hex
            for position, (item, score, prop) in enumerate(zip(rec.items, rec.scores, rec.propensities, strict=True)):
                row = {
                    "user": None if user is None else str(user),
                    "item": item,
                    "event": "impression",
                    "timestamp": now,
                    "propensity": prop,
                    "score": score,
                    "position": position,
                    "request_id": request_id,
                    "explore": explore,
                }
                lines.append(json.dumps(row))
        if not lines:
            return
        data = ("\n".join(lines) + "\n").encode()
        import fcntl

        with self._lock:
            if self._fd is None:
                return
            fd = self._current_fd()
            try:
                size = os.fstat(fd).st_size
                if self.max_bytes > 0 and size > 0 and size + len(data) > self.max_bytes:
                    self._rotate()
                    fd = self._fd
                os.write(fd, data)
            finally:
                if self._fd is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


@dataclass
class _Job:
    request: RecommendRequest
    future: asyncio.Future[Recommendation]
    loop: asyncio.AbstractEventLoop


class MicroBatcher:
    """One worker thread scoring waiting /recommend requests together (see the module docstring)."""

    def __init__(self, recommender: Recommender, max_batch: int, impressions: ImpressionLog | None) -> None:
        self.recommender = recommender
        self.max_batch = max_batch
        self.impressions = impressions
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="topkrec-scorer", daemon=True)
        self.batches = 0
        self.requests = 0

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    async def submit(self, request: RecommendRequest) -> Recommendation:
        if not self.alive:
            raise RuntimeError("the scorer thread is not running")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Recommendation] = loop.create_future()
        self._queue.put(_Job(request, future, loop))
        return await future

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:  # never leave requests waiting on a dead scorer
            logger.exception("the scorer thread stopped")
            raise

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = [first]
            while len(jobs) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                jobs.append(nxt)
            groups: dict[Any, list[_Job]] = {}
            for i, job in enumerate(jobs):
                opts = job.request.options()
                alone = (opts.explore and opts.seed is not None) or job.request.candidates is not None
                key: Any = (i,) if alone else opts  # a candidate set is the request's own: scored alone
                groups.setdefault(key, []).append(job)
            for group in groups.values():
                self._score(group)

    def _score(self, jobs: list[_Job]) -> None:
        opts = jobs[0].request.options()
        users = [j.request.user for j in jobs]
        try:
            events = [j.request.history_events for j in jobs]
            recs = self.recommender.recommend_batch(
                users,
                [j.request.history for j in jobs],
                history_events=events if any(e is not None for e in events) else None,
                candidates=jobs[0].request.candidates,
                **asdict(opts),
            )
        except Exception as e:  # handed to each request: TopkrecError → 400, anything else → 500
            if not isinstance(e, TopkrecError):
                logger.exception("scoring a batch of %d requests failed", len(jobs))
            for job in jobs:
                job.loop.call_soon_threadsafe(_set_exception, job.future, e)
            return
        self.batches += 1
        self.requests += len(jobs)
        if self.impressions is not None:
            try:
                self.impressions.write(users, recs, opts.explore)
            except OSError:
                logger.exception("cannot append to the impressions log %s", self.impressions.path)
        for job, rec in zip(jobs, recs, strict=True):
            job.loop.call_soon_threadsafe(_set_result, job.future, rec)


def _set_result(future: asyncio.Future[Recommendation], value: Recommendation) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Recommendation], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class BodySizeLimit:
    """ASGI middleware: a request body over ``max_bytes`` (declared or streamed) gets a 413; a body whose
    next piece does not arrive within ``read_timeout_s`` gets a 408 (a stalled client must not hold a
    connection and a request slot forever; uvicorn has no body read timeout of its own)."""

    def __init__(self, app: Any, max_bytes: int, read_timeout_s: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_error(send, 400, "invalid Content-Length header")
                    return
                if declared > self.max_bytes:
                    await _send_error(send, 413, f"request body of {declared} bytes exceeds {self.max_bytes}")
                    return
        seen = 0
        body_done = False
        failure: tuple[int, str] | None = None

        async def limited_receive() -> Any:
            nonlocal seen, body_done, failure
            if body_done:  # after the body: a disconnect wait, no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout=self.read_timeout_s)
            except TimeoutError:
                failure = (408, f"the request body stalled: nothing arrived for {self.read_timeout_s:g} s")
                raise HTTPException(*failure) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if seen > self.max_bytes:
                    failure = (413, f"request body exceeds {self.max_bytes} bytes")
                    # FastAPI re-raises HTTPExceptions met while reading the body, so this becomes a 413.
                    raise HTTPException(*failure)
            return message

        started = False

        async def guarded_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, limited_receive, guarded_send)
        if failure is not None and not started:
            await _send_error(send, *failure)


async def _send_error(send: Any, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status in (408, 413):  # the rest of the body is never read: the connection cannot be reused
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _json(content: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(content=content, status_code=status)


def _describe_validation(errors: list[Any]) -> tuple[str, list[dict[str, Any]]]:
    parts = []
    detail = []
    for err in errors:
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        where = ".".join(loc) if loc else "body"
        msg = str(err.get("msg", "invalid"))
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if err.get("type") == "json_invalid":
            where, msg = "body", "is not valid JSON" + (f" ({err['ctx']['error']})" if err.get("ctx") else "")
            loc = []
        elif err.get("type") == "missing" and not loc:
            where, msg = "body", "a JSON object body is required"
        parts.append(f"{where}: {msg}")
        detail.append({"loc": loc, "msg": msg, "type": str(err.get("type", ""))})
    return "invalid request: " + "; ".join(parts[:10]), detail


def create_app(
    recommender: Recommender,
    limits: ServeLimits | None = None,
    impressions: Path | None = None,
    impressions_max_bytes: int = 100_000_000,
    impressions_backups: int = 5,
) -> FastAPI:
    """The FastAPI app serving ``recommender``; ``impressions`` appends served slates as JSONL (rotated
    beyond ``impressions_max_bytes``, keeping ``impressions_backups`` old files)."""
    from contextlib import asynccontextmanager

    limits = limits or ServeLimits()
    log = ImpressionLog(impressions, impressions_max_bytes, impressions_backups) if impressions is not None else None
    batcher = MicroBatcher(recommender, limits.max_micro_batch, log)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()
            if log is not None:
                log.close()

    app = FastAPI(
        title="topkrec",
        description="REINFORCE recommender with the top-K off-policy correction (Chen et al., WSDM 2019). "
        "Scores are policy logits; propensities are the probability that the serving procedure shows the item.",
        version=str(recommender.info().get("library_version") or ""),
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    errors: dict[int | str, dict[str, Any]] = {s: {"model": ErrorResponse} for s in (400, 413, 415, 422)}

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        if content_type and "json" not in content_type.split(";")[0].lower():
            message = f"the body must be JSON sent as Content-Type: application/json, not {content_type}"
            return _json({"error": message}, 415)
        message, detail = _describe_validation(list(exc.errors()))
        return _json({"error": message, "detail": detail}, 422)

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code in (408, 413):  # the rest of the body is never read: the connection cannot be reused
            headers["connection"] = "close"
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(TopkrecError)
    async def _user_error(_: Request, exc: TopkrecError) -> JSONResponse:
        return _json({"error": str(exc)}, 400)

    def _check_history(history: list[Any] | None, where: str) -> None:
        if history is not None and len(history) > limits.max_history:
            raise TopkrecError(f"{where} has {len(history)} items; at most {limits.max_history} are accepted")

    @app.post("/recommend", response_model=RecommendResponse, responses=errors)
    async def recommend(body: RecommendRequest) -> JSONResponse:
        """Recommend ``k`` items for a user (raw ids), optionally with Boltzmann exploration."""
        _check_history(body.history, "history")
        rec = await batcher.submit(body)
        return _json(rec.to_dict())

    @app.post("/recommend/batch", response_model=BatchResponse, responses=errors)
    def recommend_batch(body: BatchRequest) -> JSONResponse:
        """Recommend for many users at once (aligned ``users`` and ``histories``)."""
        n = len(body.users) if body.users is not None else len(body.histories or [])
        if body.users is None and body.histories is None:
            raise TopkrecError("give users, histories or both")
        if n > limits.max_batch_rows:
            raise TopkrecError(f"batch of {n} rows; at most {limits.max_batch_rows} are accepted")
        for i, h in enumerate(body.histories or []):
            _check_history(h, f"histories[{i}]")
        opts = body.options()
        if opts.explore:
            from topkrec.serve.exploration import ExplorationConfig

            work = n * ExplorationConfig(opts.k, opts.m, opts.k_prime, opts.temperature).work(recommender.n_items)
            if work > limits.max_explore_work:
                raise TopkrecError(
                    f"exploring {n} rows with m={opts.m}, k={opts.k} is {work} units of work, more than "
                    f"{limits.max_explore_work}; send fewer rows per request or lower m or k − k_prime"
                )
        recs = recommender.recommend_batch(
            body.users, body.histories, history_events=body.history_events, candidates=body.candidates, **asdict(opts)
        )
        if log is not None:
            log.write(list(body.users or [None] * n), recs, opts.explore)
        return _json({"results": [r.to_dict() for r in recs]})

    @app.get("/health")
    def health() -> JSONResponse:
        """Liveness: the model is loaded and the scorer is running (503 otherwise)."""
        body = {
            "status": "ok" if batcher.alive else "scorer stopped",
            "n_items": recommender.n_items,
            "requests_scored": batcher.requests,
            "batches": batcher.batches,
        }
        return _json(body, 200 if batcher.alive else 503)

    @app.get("/model")
    def model() -> dict[str, Any]:
        """Summary of the served model's configuration."""
        return recommender.info()

    app.add_middleware(BodySizeLimit, max_bytes=limits.max_body_bytes, read_timeout_s=limits.read_timeout_s)
    return app


SERVE_CONFIG_ENV = "TOPKREC_SERVE_CONFIG"


def app_from_env() -> FastAPI:
    """App factory for ``uvicorn --workers N`` (each worker process loads the model itself), configured
    by the JSON in ``$TOPKREC_SERVE_CONFIG``: model, device, dataset, impressions and ServeLimits fields."""
    raw = os.environ.get(SERVE_CONFIG_ENV)
    if not raw:
        raise TopkrecError(f"${SERVE_CONFIG_ENV} is not set; start the server with `topkrec serve`")
    cfg = json.loads(raw)
    if cfg.get("threads"):
        import torch

        torch.set_num_threads(int(cfg["threads"]))
    rec = Recommender.load(cfg["model"], device=cfg.get("device", "auto"), dataset=cfg.get("dataset"))
    limits = ServeLimits(**cfg.get("limits", {}))
    impressions = cfg.get("impressions")
    return create_app(
        rec,
        limits=limits,
        impressions=Path(impressions) if impressions else None,
        impressions_max_bytes=int(cfg.get("impressions_max_bytes", 100_000_000)),
        impressions_backups=int(cfg.get("impressions_backups", 5)),
    )
