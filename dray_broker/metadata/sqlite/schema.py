"""The database file: its tables, how connections to it are opened, and how a write transaction begins.

Tables:
- kv: one row per key, with `sk` = hierarchical_sort_key(key) as the unique, indexed sort column, so ranges and
  floor/ceiling/lower/higher follow Oxia's hierarchical order exactly. `session_id` marks ephemeral keys.
- changes: an append-only log of every modification (AUTOINCREMENT id, so ids are never reused). The id of the
  change row written in the same transaction is the key's new version: versions are global and monotonic across
  keys and processes. Watches read this log; entries older than about an hour are pruned.
- sessions: one row per live session with an expiry time, refreshed every timeout/3.

The file is in WAL mode and shared by several processes on one machine; SQLite's write lock serializes commits.
"""

from __future__ import annotations

import random
import sqlite3
import time

from dray_broker.metadata.base import MetadataError

BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    id INTEGER PRIMARY KEY,
    sk BLOB NOT NULL UNIQUE,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    version INTEGER NOT NULL,
    session_id INTEGER
);
CREATE INDEX IF NOT EXISTS kv_session ON kv (session_id) WHERE session_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    type INTEGER NOT NULL,
    range_end TEXT,
    ts REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    expires_at REAL NOT NULL,
    timeout_ms INTEGER NOT NULL,
    pid INTEGER,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_expiry ON sessions (expires_at);
"""


def connect(path: str) -> sqlite3.Connection:
    """The store's connection: WAL mode, durable commits, and the tables created if missing."""
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000.0, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_MS)}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise MetadataError(f"cannot put {path} in WAL mode (got {mode})")
    # A produce is acked once its index entry is committed, so a commit must survive a power loss as it does
    # on Oxia: synchronous=FULL fsyncs the WAL file at every commit (NORMAL would only keep the file
    # consistent, losing the last commits). Group commit shares one fsync among the writes queued meanwhile.
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("BEGIN IMMEDIATE")
    try:
        for stmt in _SCHEMA.split(";"):
            if stmt.strip():
                conn.execute(stmt)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return conn


def connect_for_sessions(path: str) -> sqlite3.Connection:
    """The session thread's connection (the store's has created the tables)."""
    conn = sqlite3.connect(path, isolation_level=None)
    # A lost session row costs nothing after a power loss (every session is over then): no fsync.
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def begin_immediate(conn: sqlite3.Connection, wait_s: float) -> None:
    """BEGIN IMMEDIATE, waiting up to wait_s for another connection's write lock with short sleeps.

    SQLite's own busy handler backs off to 100 ms sleeps, which caps the write rate of several processes sharing
    the file (and starves a rare writer, such as a keepalive, among busy ones); here each retry waits a few ms."""
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        deadline = time.monotonic() + wait_s
        delay = 0.0002
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                if time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.004)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


def log_change(conn: sqlite3.Connection, key: str, type_: int, range_end: str | None = None) -> int:
    """Append a change (type_: a NotificationType value); its id is the new version of the key."""
    return conn.execute(
        "INSERT INTO changes (key, type, range_end, ts) VALUES (?, ?, ?, ?)", (key, type_, range_end, time.time())
    ).lastrowid
