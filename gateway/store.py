"""The gateway's SQLite file: the request log and the feedback, written off the request path.

A finished request becomes one row (``RequestRecord.row``), appended to a bounded in-memory
queue; a background thread takes the queue in batches and commits each batch in one
transaction. Nothing on the request path touches the disk:

- WAL mode, ``synchronous = NORMAL``, a ``busy_timeout``: readers (``oracle-council eval
  ab-online``) never block the writer, and several gateway instances can share one file;
- a locked or unwritable database is retried with exponential backoff while the rows stay
  queued; once ``queue_size`` rows wait, new rows are dropped and counted
  (``oracle_store_dropped_total``) with a warning, never an error for the client;
- ``close()`` (the app's shutdown) writes everything still queued, so a clean restart loses
  nothing;
- feedback goes through the same queue, after every row queued before it, so the request it
  names is committed (or known not to exist) when it is checked; its caller awaits the commit.

The schema is versioned (``schema_version``); ``migrate`` applies the missing steps in one
immediate transaction and is safe to run from several instances at once.

    requests  id, request_id, ts (unix s, when the request started), api, requested_model,
              served_model, backend, experiment, arm, router, specialist, status, latency_ms,
              first_byte_ms, prompt_tokens, completion_tokens, user_hash, key_hash,
              error (the error's code or type when the answer was an HTTP error; since v2)
    feedback  id, request_id, ts, score (0..1), thumbs ('up' | 'down'), comment
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from gateway.errors import GatewayError

log = logging.getLogger("oracle_council.store")

MIGRATIONS: list[tuple[int, str]] = [
    (1, """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    ts REAL NOT NULL,
    api TEXT NOT NULL,
    requested_model TEXT,
    served_model TEXT,
    backend TEXT,
    experiment TEXT,
    arm TEXT,
    router TEXT,
    specialist TEXT,
    status TEXT NOT NULL,
    latency_ms REAL,
    first_byte_ms REAL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    user_hash TEXT,
    key_hash TEXT
);
CREATE INDEX IF NOT EXISTS requests_request_id ON requests(request_id);
CREATE INDEX IF NOT EXISTS requests_ts ON requests(ts);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    ts REAL NOT NULL,
    score REAL,
    thumbs TEXT CHECK (thumbs IN ('up', 'down')),
    comment TEXT
);
CREATE INDEX IF NOT EXISTS feedback_request_id ON feedback(request_id);
"""),
    # the error code (model_not_found, request_too_large, ...) or type of a request answered with an error
    (2, "ALTER TABLE requests ADD COLUMN error TEXT"),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]

REQUEST_COLUMNS = ("request_id", "ts", "api", "requested_model", "served_model", "backend", "experiment", "arm",
                   "router", "specialist", "status", "latency_ms", "first_byte_ms", "prompt_tokens",
                   "completion_tokens", "user_hash", "key_hash", "error")
_INSERT_REQUEST = (f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) "
                   f"VALUES ({', '.join('?' for _ in REQUEST_COLUMNS)})")
# Rows go in as multi-row INSERTs: one statement (one sqlite3_step, one release of the GIL) per
# chunk instead of per row, so the writer thread and the event loop hand the GIL back and forth a
# few times per batch, not twice per row (measured: that hand-off showed in the p99 at 100 RPS).
_ROWS_PER_INSERT = max(1, min(256, (999 if sqlite3.sqlite_version_info < (3, 32) else 32766) // len(REQUEST_COLUMNS)))
_ROW_PLACEHOLDER = f"({', '.join('?' for _ in REQUEST_COLUMNS)})"


def _insert_requests(conn: sqlite3.Connection, rows: list[tuple]) -> None:
    for i in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[i:i + _ROWS_PER_INSERT]
        if len(chunk) == 1:
            conn.execute(_INSERT_REQUEST, chunk[0])
            continue
        conn.execute(f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) VALUES "
                     + ", ".join([_ROW_PLACEHOLDER] * len(chunk)), [v for row in chunk for v in row])


_INSERT_FEEDBACK = "INSERT INTO feedback (request_id, ts, score, thumbs, comment) VALUES (?, ?, ?, ?, ?)"

BACKOFF_START = 0.05  # seconds before the first retry of a failed write; doubles up to BACKOFF_MAX
BACKOFF_MAX = 2.0
WARN_EVERY = 10.0  # seconds between repeated warnings about a failing database or dropped rows


class UnknownRequest(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "request_not_found"


class StoreUnavailable(GatewayError):
    status_code = 503
    error_type = "server_error"
    code = "store_unavailable"


class FeedbackDisabled(GatewayError):
    status_code = 501
    error_type = "invalid_request_error"
    code = "feedback_disabled"


# -- what a request contributes -------------------------------------------------------------------

@lru_cache(maxsize=4096)
def pseudonym(salt: str, value: str) -> str:
    """What is stored instead of an API key or a user id: 16 hex digits of a salted sha256."""
    return hashlib.sha256(f"{salt}\0{value}".encode()).hexdigest()[:16]


class RequestRecord:
    """What a service knows about one request before it finishes; ``row`` completes it."""

    __slots__ = ("requested", "experiment", "arm", "router", "specialist", "user_hash", "key_hash", "first_byte")

    def __init__(self, requested: str | None, *, experiment: str | None = None, arm: str | None = None,
                 user_hash: str | None = None, key_hash: str | None = None) -> None:
        self.requested = requested
        self.experiment = experiment
        self.arm = arm
        self.router: str | None = None
        self.specialist: str | None = None
        self.user_hash = user_hash
        self.key_hash = key_hash
        self.first_byte: float | None = None  # perf_counter when the answer (or its first chunk) was ready

    def row(self, request_id: str, api: str, model: str, backend: str, status: str, usage: dict | None,
            start: float, end: float, error: str | None = None) -> tuple:
        """The row, in ``REQUEST_COLUMNS`` order; a ``model`` or ``backend`` of ``-`` (none) is NULL."""
        usage = usage if isinstance(usage, dict) else {}
        return (request_id, time.time() - (end - start), api, self.requested, None if model == "-" else model,
                None if backend == "-" else backend, self.experiment, self.arm, self.router, self.specialist,
                status, (end - start) * 1000.0,
                None if self.first_byte is None else (self.first_byte - start) * 1000.0,
                _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")),
                self.user_hash, self.key_hash, error)


def _count(n: Any) -> int | None:
    return n if isinstance(n, int) and n >= 0 else None


# -- the schema -------------------------------------------------------------------------------------

def connect(path: str, *, busy_timeout: float = 1.0, readonly: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, with a busy timeout."""
    if readonly:
        conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                               check_same_thread=False)
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    if not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to ``SCHEMA_VERSION``; returns the version found before. Idempotent."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied REAL NOT NULL)")
        found = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
        if found > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"schema version {found} is newer than this gateway's {SCHEMA_VERSION}; "
                                        "upgrade oracle-council")
        for version, script in MIGRATIONS:
            if version > found:
                for statement in filter(str.strip, script.split(";")):
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version (version, applied) VALUES (?, ?)", (version, time.time()))
        conn.execute("COMMIT")
        return found
    except BaseException:
        conn.execute("ROLLBACK")
        raise


# -- the writer -------------------------------------------------------------------------------------

@dataclass(slots=True)
class _Feedback:
    request_id: str
    ts: float
    score: float | None
    thumbs: str | None
    comment: str | None
    done: concurrent.futures.Future


@dataclass(slots=True)
class _Barrier:
    done: concurrent.futures.Future


class RequestStore:
    """The request log and feedback in one SQLite file, written by one background thread."""

    def __init__(self, path: str, *, queue_size: int = 10_000, batch_size: int = 500, flush_interval: float = 0.2,
                 busy_timeout: float = 1.0, shutdown_timeout: float = 10.0, metrics: Any = None) -> None:
        self.path = path
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.busy_timeout = busy_timeout
        self.shutdown_timeout = shutdown_timeout
        self._queue: deque = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._last_warning = {"drop": 0.0, "write": 0.0}
        self._dropped_since_warning = 0
        self.dropped = 0
        self.written = 0
        m = metrics
        self._m_rows = ({t: m.store_rows.labels(t) for t in ("requests", "feedback")} if m is not None else None)
        self._m_dropped = m.store_dropped if m is not None else None
        self._m_failures = m.store_failures if m is not None else None
        if m is not None:
            m.store_queue.set_function(lambda: len(self._queue))

    # -- producers (any thread; the request path) -------------------------------------------------
    def log_request(self, row: tuple) -> None:
        """Queue one row of ``requests``; never blocks, never raises."""
        if len(self._queue) >= self.queue_size or self._closed:
            self._drop("requests", "closed" if self._closed else "queue_full")
            return
        self._queue.append(row)
        if len(self._queue) >= self.batch_size and not self._wake.is_set():
            self._wake.set()

    async def add_feedback(self, request_id: str, *, score: float | None, thumbs: str | None,
                           comment: str | None, timeout: float = 10.0) -> int | None:
        """Store feedback once everything queued before it is written; its id, or None when no
        request has that id. Raises ``StoreUnavailable`` when it cannot be written in time."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._submit(_Feedback(request_id, time.time(), score, thumbs, comment, fut), "feedback")
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), timeout)
        except TimeoutError:
            raise StoreUnavailable(f"the request log could not be written within {timeout:g} s (is {self.path} "
                                   "locked by another process?); the feedback is still queued, do not resend "
                                   "it at once") from None

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until every row queued before the call is committed; False on timeout."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        try:
            self._submit(_Barrier(fut), "barrier")
            fut.result(timeout)
            return True
        except (concurrent.futures.TimeoutError, StoreUnavailable):
            return False

    def _submit(self, item: Any, table: str) -> None:
        if self._closed or len(self._queue) >= self.queue_size:
            self._drop(table, "closed" if self._closed else "queue_full")
            raise StoreUnavailable(f"the request log is {'closed' if self._closed else 'full'}; retry shortly")
        self._queue.append(item)
        self._wake.set()

    def _drop(self, table: str, reason: str) -> None:
        self.dropped += 1
        if self._m_dropped is not None:
            self._m_dropped.labels(table, reason).inc()
        self._dropped_since_warning += 1
        now = time.monotonic()
        if now - self._last_warning["drop"] >= WARN_EVERY:
            self._last_warning["drop"] = now
            log.warning("request log %s: %d row(s) dropped (%s; queue_size = %d)", self.path,
                        self._dropped_since_warning, reason, self.queue_size)
            self._dropped_since_warning = 0

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="oracle-council-store", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Write what is queued (trying for up to ``shutdown_timeout`` s if the file is locked), then stop."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.shutdown_timeout + self.busy_timeout + 5)

    # -- the writer thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        batch: list = []
        delay = BACKOFF_START
        give_up_at: float | None = None
        while True:
            if not batch:
                n = min(len(self._queue), self.batch_size)
                batch = [self._queue.popleft() for _ in range(n)]
            if not batch:
                if self._stop.is_set():
                    break
                self._wake.wait(self.flush_interval)
                self._wake.clear()
                continue
            try:
                if conn is None:
                    conn = self._open()
                self._write(conn, batch)
                batch = []
                delay = BACKOFF_START
                continue
            except Exception as exc:  # the writer thread must survive whatever happens
                if conn is not None and isinstance(exc, _REFUSED):
                    self._write_one_by_one(conn, batch)  # a row the database refuses: write the others
                    batch = []
                    continue
                if not isinstance(exc, (sqlite3.Error, OSError)):
                    log.exception("request log %s: unexpected error; the batch is retried", self.path)
                if self._m_failures is not None:
                    self._m_failures.labels(type(exc).__name__).inc()
                now = time.monotonic()
                if now - self._last_warning["write"] >= WARN_EVERY:
                    self._last_warning["write"] = now
                    log.warning("request log %s: cannot write (%s); %d row(s) waiting, retrying", self.path, exc,
                                len(batch) + len(self._queue))
                if not _is_busy(exc) and conn is not None:  # a broken connection: open a new one next time
                    conn.close()
                    conn = None
            if self._stop.is_set():
                give_up_at = give_up_at or time.monotonic() + self.shutdown_timeout
                if time.monotonic() >= give_up_at:
                    lost = batch + list(self._queue)
                    self._queue.clear()
                    for item in lost:
                        self._fail(item, "shutdown")
                    log.error("request log %s: %d row(s) not written at shutdown (the file stayed locked or "
                              "unwritable for %g s)", self.path, len(lost), self.shutdown_timeout)
                    break
            time.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
        if conn is not None:
            try:
                conn.execute("PRAGMA optimize")
            except sqlite3.Error:
                pass
            conn.close()

    def _open(self) -> sqlite3.Connection:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = connect(self.path, busy_timeout=self.busy_timeout)
        try:
            migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _write(self, conn: sqlite3.Connection, batch: list) -> None:
        rows: list[tuple] = []
        settled: list[tuple[concurrent.futures.Future, Any]] = []
        n_rows = n_feedback = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            for item in batch:
                if type(item) is tuple:
                    rows.append(item)
                    continue
                if rows:  # keep the order: the rows queued before a feedback are visible to its check
                    _insert_requests(conn, rows)
                    n_rows += len(rows)
                    rows = []
                if isinstance(item, _Feedback):
                    known = conn.execute("SELECT 1 FROM requests WHERE request_id = ? LIMIT 1",
                                         (item.request_id,)).fetchone()
                    fid = None
                    if known:
                        fid = conn.execute(_INSERT_FEEDBACK, (item.request_id, item.ts, item.score, item.thumbs,
                                                              item.comment)).lastrowid
                        n_feedback += 1
                    settled.append((item.done, fid))
                else:
                    settled.append((item.done, True))
            if rows:
                _insert_requests(conn, rows)
                n_rows += len(rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.written += n_rows
        if self._m_rows is not None:
            if n_rows:
                self._m_rows["requests"].inc(n_rows)
            if n_feedback:
                self._m_rows["feedback"].inc(n_feedback)
        for fut, value in settled:  # answered only once committed: a 200 means the feedback is on disk
            if not fut.done():
                fut.set_result(value)

    def _write_one_by_one(self, conn: sqlite3.Connection, batch: list) -> None:
        for i, item in enumerate(batch):
            try:
                self._write(conn, [item])
            except _REFUSED as exc:
                log.error("request log %s: a row was refused and dropped (%s): %r", self.path, exc, item)
                self._fail(item, "invalid")
            except sqlite3.Error:  # locked again: the rest goes back to the front of the queue
                self._queue.extendleft(reversed(batch[i:]))
                return

    def _fail(self, item: Any, reason: str) -> None:
        if type(item) is tuple:
            self._drop("requests", reason)
        else:
            self._drop("feedback" if isinstance(item, _Feedback) else "barrier", reason)
            if not item.done.done():
                item.done.set_exception(StoreUnavailable("the request log was closed before this was written"))


_REFUSED = (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.ProgrammingError, sqlite3.DataError)


def _is_busy(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and any(
        s in str(exc) for s in ("locked", "busy"))

