"""The worker's model cache: loaded models stay between jobs, keyed by what was loaded.

Loading is separate from caching (as in InvokeAI's model manager): callers pass a
loader, the cache decides whether to call it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    loads: int = 0
    evictions: int = 0


class ModelCache:
    """Least-recently-used cache of loaded models, holding at most `max_entries`."""

    def __init__(self, max_entries: int = 1) -> None:
        self.max_entries = max_entries
        self.stats = CacheStats()
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, loader: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._entries:
                self.stats.hits += 1
                self._entries.move_to_end(key)
                return self._entries[key]
            self.stats.misses += 1
            # Make room first, so the old model is gone before the new one loads.
            while len(self._entries) >= self.max_entries:
                self._entries.popitem(last=False)
                self.stats.evictions += 1
            # A failed load raises here and leaves nothing behind.
            value = loader()
            self.stats.loads += 1
            self._entries[key] = value
            return value

    def keys(self) -> list[Hashable]:
        return list(self._entries)
