"""Stored responses, for ``previous_response_id`` and ``GET``/``DELETE /v1/responses/{id}``: bounded,
expiring, and scoped by API key.

One implementation over stdlib sqlite3: ``memory`` is an in-memory database, ``sqlite:PATH`` a file,
so restarts keep conversations. Either way the store holds at most ``max_entries`` responses and
``max_bytes`` of their JSON, evicting the oldest first, and forgets a response ``ttl_s`` after it
was made: a server that stores every answer by default must not grow without bound.

Each response belongs to the scope of the key that made it (a digest of the key itself, so a key
keeps its responses when the key list is reordered, and a key that replaces another in the list,
or in a persistent store across restarts, does not inherit them). Another scope's id reads as
unknown: a 404, the same as an id that never existed.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    scope TEXT NOT NULL,
    created REAL NOT NULL,
    size INTEGER NOT NULL,
    response TEXT NOT NULL,
    input_items TEXT NOT NULL,
    conversation TEXT NOT NULL
)
"""


@dataclass(frozen=True)
class StoredResponse:
    """A response as it was answered, the input items its request sent, and the whole conversation
    (earlier turns, this input, this output) a later ``previous_response_id`` continues."""

    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    conversation: list[dict[str, Any]]


class ResponseStore:
    def __init__(
        self,
        location: str = "memory",
        *,
        max_entries: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        ttl_s: float = 30 * 24 * 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``location``: ``memory`` or ``sqlite:PATH``; raises ``ValueError`` for anything else."""
        if location == "memory":
            path = ":memory:"
        elif location.startswith("sqlite:") and location != "sqlite:":
            path = location.removeprefix("sqlite:")
        else:
            raise ValueError(f"the responses store must be 'memory' or 'sqlite:PATH', not {location!r}")
        # The event loop's thread is the only user; ASGI test clients may run it on another thread.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute(_SCHEMA)
        self.max_entries, self.max_bytes, self.ttl_s = max_entries, max_bytes, ttl_s
        self._clock = clock

    def put(self, scope: str, response_id: str, stored: StoredResponse) -> None:
        texts = [json.dumps(part) for part in (stored.response, stored.input_items, stored.conversation)]
        size = sum(len(text) for text in texts)
        self._db.execute(
            "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?)",
            (response_id, scope, self._clock(), size, *texts),
        )
        self._evict()

    def get(self, scope: str, response_id: str) -> StoredResponse | None:
        self._expire()
        row = self._db.execute(
            "SELECT response, input_items, conversation FROM responses WHERE id = ? AND scope = ?",
            (response_id, scope),
        ).fetchone()
        if row is None:
            return None
        return StoredResponse(*(json.loads(text) for text in row))

    def delete(self, scope: str, response_id: str) -> bool:
        self._expire()
        cursor = self._db.execute("DELETE FROM responses WHERE id = ? AND scope = ?", (response_id, scope))
        return cursor.rowcount > 0

    def __len__(self) -> int:
        self._expire()
        count: int = self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        return count

    def close(self) -> None:
        self._db.close()

    def _expire(self) -> None:
        self._db.execute("DELETE FROM responses WHERE created < ?", (self._clock() - self.ttl_s,))

    def _evict(self) -> None:
        """Expired responses go, then the oldest until the count and the bytes are within bounds."""
        self._expire()
        count, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM responses").fetchone()
        if count <= self.max_entries and size <= self.max_bytes:
            return
        doomed: list[str] = []
        for response_id, entry_size in self._db.execute("SELECT id, size FROM responses ORDER BY created, rowid"):
            if count <= self.max_entries and size <= self.max_bytes:
                break
            doomed.append(response_id)
            count, size = count - 1, size - entry_size
        self._db.executemany("DELETE FROM responses WHERE id = ?", [(d,) for d in doomed])
