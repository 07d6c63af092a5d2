"""A writer in another process holding SQLite's lock does not stall serving.

Writes go through the store's writer thread, so a write-back waiting for the lock waits there;
before, it waited on the event loop, and every request waited with it for as long as the other
process (a batch run, a stream consumer) held the lock.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from hybridserve.config import Project
from hybridserve.storage.sqlite import sqlite_path

MakeProject = Callable[..., Project]
Serve = Callable[[Project], Any]
HOLD = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


@pytest.mark.slow
async def test_another_process_holding_the_write_lock_does_not_stall_answers(
    make_project: MakeProject, serve: Serve
) -> None:
    # A generous budget: only a stalled loop, not a busy test machine, may delay an answer.
    app, client = await serve(make_project({"server": {"l1_cache_size": 0}}, latency_budget="3s"))
    cards = [f"card_{i:06d}" for i in range(50)]
    for card in cards:  # stored answers to read back while the lock is held
        r = await client.post("/v1/predict/fraud", json={"entity": card, "mode": "compute"})
        assert r.status_code == 200
    await app.state.router.flush()
    path = sqlite_path(app.state.services.predictions_kv.url)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, path, "3.0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        answered: list[float] = []
        i = 0
        while time.monotonic() - started < 2.7:
            card = cards[i % len(cards)]
            # Every other request computes, so its write-back queues for the held lock.
            mode = "compute" if i % 2 else "stored"
            r = await client.post("/v1/predict/fraud", json={"entity": card, "mode": mode})
            assert r.status_code == 200, r.text
            assert not r.json()["predictions"][0]["degraded"], r.text
            answered.append(time.monotonic())
            i += 1
        gaps = [b - a for a, b in zip([started, *answered], answered, strict=False)]
        # Before, the first write-back held the loop until the lock was released (3 s).
        assert len(answered) >= 20 and max(gaps) < 1.5, (len(answered), max(gaps))
    finally:
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()
    await app.state.router.flush()


def _hold_reserved_lock(path: str, seconds: float) -> Callable[[], None]:
    """A connection on a fresh rollback-journal file holding its write lock for ``seconds``.

    This is what a second process sees while the first is still creating the file: switching
    to WAL then fails at once (SQLite's deadlock rule, without calling the busy handler).
    """
    import sqlite3
    import threading

    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("CREATE TABLE held (x)")
    conn.execute("BEGIN IMMEDIATE")
    timer = threading.Timer(seconds, lambda: conn.execute("COMMIT"))
    timer.start()
    return timer.join


def test_opening_a_file_another_process_is_creating_waits_for_it(tmp_path: Any) -> None:
    from hybridserve.registry.schema import make_engine
    from hybridserve.storage import open_store

    path = str(tmp_path / "store.db")
    done = _hold_reserved_lock(path, 0.3)
    store = open_store(f"sqlite:///{path}", "t:")  # used to fail: "database is locked"
    done()
    assert store is not None
    path = str(tmp_path / "registry.db")
    done = _hold_reserved_lock(path, 0.3)
    engine = make_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    done()
    engine.dispose()
