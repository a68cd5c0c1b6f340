"""The audit log: who changed what, from where; an append-only Redis stream with a size cap.

An entry names the token a change was made with by its id, never by its secret.
"""

from __future__ import annotations

import time
from typing import Any

from redis import Redis

from shared import keys

_FIELDS = ("time", "actor", "action", "target", "source", "token_id", "detail")


def entry(
    actor: str,
    action: str,
    target: str = "",
    *,
    source: str = "",
    token_id: str | None = None,
    detail: str = "",
) -> dict[str, str]:
    """An entry's fields, stamped now. `Audit.record` appends one; a job's submission hands
    its entry to the step that records the job (`JobControl.submit(audit=...)`), so the two
    are written together or not at all."""
    return {
        "time": repr(time.time()),
        "actor": actor,
        "action": action,
        "target": target,
        "source": source,
        "token_id": token_id or "",
        "detail": detail,
    }


class Audit:
    def __init__(self, redis: Redis, max_entries: int):
        self.redis = redis
        self.max_entries = max_entries

    def record(self, *args: Any, **kwargs: Any) -> str:
        """Append `entry(*args, **kwargs)` (e.g. actor "alice", action "account.disable",
        target "bob", source "10.0.0.5"); returns its stream id."""
        return self.append(entry(*args, **kwargs))

    def append(self, fields: dict[str, str]) -> str:
        """Append an entry made by `entry`; returns its stream id. Old entries go once the
        cap is passed (trimmed approximately, so a few more than `max_entries` may remain)."""
        entry_id = self.redis.xadd(
            keys.audit_log(), fields, maxlen=self.max_entries, approximate=True
        )
        return entry_id.decode()

    def recent(
        self,
        limit: int = 100,
        *,
        actor: str | None = None,
        action: str | None = None,
        target: str | None = None,
    ) -> list[dict]:
        """The newest entries first, at most `limit`, only those matching the filters given."""
        filters = {"actor": actor, "action": action, "target": target}
        wanted = {k: v for k, v in filters.items() if v is not None}
        page_size = max(limit, 100)
        found: list[dict] = []
        end = "+"
        while len(found) < limit:
            page = self.redis.xrevrange(keys.audit_log(), max=end, count=page_size)
            for entry_id, raw in page:
                entry = _entry(entry_id.decode(), raw)
                if all(entry[k] == v for k, v in wanted.items()):
                    found.append(entry)
                    if len(found) == limit:
                        break
            if len(page) < page_size:
                break
            end = f"({page[-1][0].decode()}"  # exclusive: continue below the last one read
        return found


def _entry(entry_id: str, raw: dict[bytes, bytes]) -> dict:
    entry = {f: raw.get(f.encode(), b"").decode() for f in _FIELDS}
    return {
        "id": entry_id,
        **entry,
        "time": float(entry["time"]),
        "token_id": entry["token_id"] or None,
    }
