"""The SQLite request log on its own (gateway/store.py): schema, batching, restart, a locked or
unwritable file, a full queue, feedback ordering. A real SQLite file in tmp_path throughout."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from gateway.metrics import Metrics
from gateway.store import (
    REQUEST_COLUMNS,
    SCHEMA_VERSION,
    RequestRecord,
    RequestStore,
    StoreUnavailable,
    connect,
    migrate,
    pseudonym,
)


def row(i: int, **kw) -> tuple:
    values = dict(request_id=f"req-{i}", ts=1_700_000_000.0 + i, api="chat", requested_model="oracle-council",
                  served_model="euclid-asm", backend="up", experiment=None, arm=None, router="direct",
                  specialist="euclid-asm", status="ok", latency_ms=1.5, first_byte_ms=1.0, prompt_tokens=3,
                  completion_tokens=4, user_hash=None, key_hash=None, error=None)
    values.update(kw)
    return tuple(values[c] for c in REQUEST_COLUMNS)


def count(path, table: str = "requests") -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def wait_for(pred, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "sub" / "state.db")  # the folder does not exist yet: the store makes it


def make(db, **kw) -> RequestStore:
    kw.setdefault("flush_interval", 0.02)
    kw.setdefault("busy_timeout", 0.02)
    store = RequestStore(db, **kw)
    store.start()
    return store


def test_schema_is_versioned_wal_and_migrations_are_idempotent(tmp_path):
    path = str(tmp_path / "s.db")
    conn = connect(path)
    assert migrate(conn) == 0
    assert migrate(conn) == SCHEMA_VERSION  # a second run finds the schema and changes nothing
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    cols = [r[1] for r in conn.execute("PRAGMA table_info(requests)")]
    assert cols == ["id", *REQUEST_COLUMNS]
    assert [r[1] for r in conn.execute("PRAGMA table_info(feedback)")] == [
        "id", "request_id", "ts", "score", "thumbs", "comment"]
    conn.execute("INSERT INTO schema_version (version, applied) VALUES (?, 0)", (SCHEMA_VERSION + 1,))
    with pytest.raises(sqlite3.DatabaseError, match="newer than this gateway"):
        migrate(conn)


def test_a_version_1_file_gets_the_error_column_and_keeps_its_rows(tmp_path):
    from gateway.store import MIGRATIONS

    path = str(tmp_path / "v1.db")
    conn = connect(path)  # a file written by a gateway before the error column
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied REAL NOT NULL)")
    for statement in filter(str.strip, MIGRATIONS[0][1].split(";")):
        conn.execute(statement)
    conn.execute("INSERT INTO schema_version (version, applied) VALUES (1, 0)")
    v1_columns = REQUEST_COLUMNS[:-1]
    conn.execute(f"INSERT INTO requests ({', '.join(v1_columns)}) VALUES ({', '.join('?' for _ in v1_columns)})",
                 row(1)[:-1])
    assert migrate(conn) == 1
    assert [r[1] for r in conn.execute("PRAGMA table_info(requests)")] == ["id", *REQUEST_COLUMNS]
    conn.close()
    store = make(path)
    store.log_request(row(2, status="error_404", error="model_not_found"))
    assert store.flush(10)
    store.close()
    with sqlite3.connect(path) as conn:
        got = conn.execute("SELECT request_id, status, error FROM requests ORDER BY id").fetchall()
    assert got == [("req-1", "ok", None), ("req-2", "error_404", "model_not_found")]


def test_rows_are_written_in_batches_and_close_flushes_everything(db):
    metrics = Metrics()
    store = make(db, batch_size=7, flush_interval=30, metrics=metrics)  # never wakes on its own in this test
    for i in range(100):
        store.log_request(row(i))
    store.close()  # a clean shutdown writes what is queued
    assert count(db) == 100
    assert store.written == 100 and store.dropped == 0
    assert metrics.store_rows.labels("requests")._value.get() == 100
    with sqlite3.connect(db) as conn:
        ids = [r[0] for r in conn.execute("SELECT request_id FROM requests ORDER BY id")]
    assert ids == [f"req-{i}" for i in range(100)], "in the order they were queued"


def test_a_restart_reads_the_rows_of_the_previous_run(db):
    first = make(db)
    for i in range(10):
        first.log_request(row(i))
    first.close()
    second = make(db)
    for i in range(10, 15):
        second.log_request(row(i))
    assert second.flush(5)
    assert count(db) == 15
    second.close()


def test_locked_file_keeps_rows_queued_then_writes_every_one(db):
    metrics = Metrics()
    store = make(db, metrics=metrics)
    store.log_request(row(0))
    assert store.flush(5)  # the file and its schema exist
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    try:
        start = time.perf_counter()
        for i in range(1, 200):
            store.log_request(row(i))
        assert time.perf_counter() - start < 0.5, "queuing never waits for the database"
        wait_for(lambda: metrics.store_failures.labels("OperationalError")._value.get() >= 2)
        assert holder.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 1
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.flush(10)
    assert count(db) == 200 and store.dropped == 0
    store.close()


def test_a_full_queue_drops_and_counts_never_blocks(db):
    metrics = Metrics()
    store = RequestStore(db, queue_size=5, flush_interval=30, metrics=metrics)  # not started: nothing drains
    for i in range(8):
        store.log_request(row(i))
    assert store.dropped == 3
    assert metrics.store_dropped.labels("requests", "queue_full")._value.get() == 3
    store.start()
    store.close()
    assert count(db) == 5


def test_unwritable_path_is_retried_not_raised(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the folder should be")
    metrics = Metrics()
    store = make(str(blocker / "state.db"), metrics=metrics, shutdown_timeout=0.2)
    store.log_request(row(1))  # never raises on the request path
    wait_for(lambda: sum(s.value for m in metrics.store_failures.collect() for s in m.samples
                         if s.name.endswith("_total")) >= 2)
    store.close()  # gives up after shutdown_timeout, counting what it could not write
    assert store.dropped == 1
    assert metrics.store_dropped.labels("requests", "shutdown")._value.get() == 1


def test_feedback_sees_rows_queued_before_it_and_is_committed_when_answered(db):
    store = make(db, flush_interval=30)  # only feedback wakes the writer in this test

    async def go():
        store.log_request(row(1))
        fid = await store.add_feedback("req-1", score=0.75, thumbs="up", comment="nice")
        missing = await store.add_feedback("req-nope", score=None, thumbs="down", comment=None)
        return fid, missing

    fid, missing = asyncio.run(go())
    assert isinstance(fid, int) and missing is None
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT request_id, score, thumbs, comment FROM feedback").fetchall() == [
            ("req-1", 0.75, "up", "nice")]
    store.close()


def test_feedback_times_out_with_a_503_while_the_file_is_locked(db):
    store = make(db)
    store.log_request(row(1))
    assert store.flush(5)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailable) as info:
            asyncio.run(store.add_feedback("req-1", score=1.0, thumbs=None, comment=None, timeout=0.3))
        assert info.value.status_code == 503
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.flush(5)
    assert count(db, "feedback") == 1, "the feedback stayed queued and was written once the lock went"
    store.close()


def test_a_row_sqlite_refuses_is_dropped_alone(db):
    store = make(db)
    store.log_request(row(1))
    store.log_request(row(2, request_id=None))  # NOT NULL: refused
    store.log_request(row(3))
    assert store.flush(5)
    assert count(db) == 2 and store.dropped == 1
    store.close()


def test_record_row_and_pseudonyms():
    rec = RequestRecord("oracle-council", experiment="exp", arm="treatment", user_hash=pseudonym("s", "alice"),
                        key_hash=pseudonym("s", "sk-1"))
    rec.router, rec.specialist = "direct", "master-sword"
    start = time.perf_counter()
    rec.first_byte = start + 0.010
    values = dict(zip(REQUEST_COLUMNS, rec.row("rid", "chat", "master-sword", "up", "ok",
                                               {"prompt_tokens": 5, "completion_tokens": 9}, start, start + 0.025)))
    assert values["latency_ms"] == pytest.approx(25.0) and values["first_byte_ms"] == pytest.approx(10.0)
    assert (values["prompt_tokens"], values["completion_tokens"]) == (5, 9)
    assert abs(values["ts"] - (time.time() - 0.025)) < 1
    assert values["user_hash"] == pseudonym("s", "alice") != pseudonym("t", "alice")
    assert "sk-1" not in repr(values) and "alice" not in repr(values)
    assert len(values["key_hash"]) == 16
    missing = dict(zip(REQUEST_COLUMNS, rec.row("r", "chat", "m", "-", "error_502", None, start, start)))
    assert missing["backend"] is None and missing["prompt_tokens"] is None and missing["error"] is None
    refused = dict(zip(REQUEST_COLUMNS, RequestRecord(None).row("r", "chat", "-", "-", "error_400", None, start,
                                                                start, "invalid_request_error")))
    assert (refused["requested_model"], refused["served_model"], refused["error"]) == (
        None, None, "invalid_request_error")


def test_big_batches_go_in_as_multi_row_inserts_with_every_value_in_place(db):
    from gateway import store as store_module

    store = make(db, batch_size=5000, flush_interval=5.0)
    rows = [row(i, latency_ms=float(i), user_hash=f"u{i}") for i in range(store_module._ROWS_PER_INSERT * 2 + 7)]
    for r in rows:
        store.log_request(r)
    assert store.flush(10)
    store.close()
    with sqlite3.connect(db) as conn:
        got = conn.execute(f"SELECT {', '.join(REQUEST_COLUMNS)} FROM requests ORDER BY ts").fetchall()
    assert got == rows
