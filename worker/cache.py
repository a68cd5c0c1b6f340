"""The worker's model cache: loaded models stay between jobs, within a memory budget.

Loading is separate from caching (as in InvokeAI's model manager): callers pass a loader,
the cache decides whether to call it. The cache does not know model families: it stores
any object and measures its weights (`worker.memory`), so pipelines, VAEs, ControlNets and
every upscaler family go through the same load, lock, evict and unload path (seed bug 000).

- Budget: bytes of distinct tensor storages over all entries; a storage shared by several
  entries (`from_pipe` variants) counts once. Memory outside torch counts too, as its holder
  declares it (`memory.NativeMemory`: an OpenVINO compiled variant); an entry that grows
  after loading is measured again with `remeasure`.
- Eviction: the policy (`worker.eviction`: `lru`, or `cost`, which weighs how often an entry
  is used, how long it takes to load again and its size) picks among entries no job holds
  (`use`) — after the ones the dispatcher named for this job (`evicting_first`: it sent
  the job here knowing what the fleet loses least by). If only locked entries are left, the
  cache goes over budget and counts it in `over_budget_events`.
- Loads: one at a time per key (a second caller waits and gets the same object), different
  keys in parallel; a failed load leaves nothing behind.
- Dropped entries give their memory back (`memory.release_memory`) — provided nobody else
  still holds a reference: `get` hands out the object unlocked, so keep it only briefly.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from worker.eviction import EvictionPolicy, PolicyName, make_policy
from worker.memory import StorageId, release_memory, storage_sizes

log = logging.getLogger(__name__)

T = TypeVar("T")
OnEvict = Callable[[Any], None]


class EntryLocked(RuntimeError):
    """An entry a job is using cannot be unloaded."""


@dataclass(frozen=True)
class CacheKey:
    """What was loaded, and how: the same key loads, looks up, locks and evicts an entry."""

    path: str  # resolved file or folder
    dtype: str  # e.g. "torch.float16"
    device: str  # e.g. "cuda:0", "cpu"
    variant: str = ""  # e.g. an OpenVINO compiled shape

    @classmethod
    def of(cls, path: str | os.PathLike, dtype: Any, device: Any, variant: str = "") -> CacheKey:
        """A canonical key: symlinks and relative paths resolve to one identity."""
        return cls(str(Path(path).resolve()), str(dtype), str(device), variant)


@dataclass
class _Entry:
    value: Any
    storages: dict[StorageId, int]
    load_s: float
    cost_s: float  # what loading it again would take: load_s unless the caller knows better
    last_used: float = field(default_factory=time.time)
    locks: int = 0
    on_evict: OnEvict | None = None

    @property
    def size_bytes(self) -> int:
        return sum(self.storages.values())


@dataclass
class _KeyLock:
    """Serialises loads of one key; dropped when nobody waits on it."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0


@dataclass
class _Counters:
    hits: int = 0
    misses: int = 0  # a load was attempted: misses == loads + load_failures
    loads: int = 0
    load_failures: int = 0
    evictions: int = 0
    unloads: int = 0
    high_water_bytes: int = 0
    over_budget_events: int = 0


class ModelCache:
    """Loaded models within `budget_bytes`; `policy` picks what to evict: `lru` unless told,
    while a worker's cache takes `Settings.cache_policy` (`cost`; `worker.device.make_cache`)."""

    def __init__(
        self,
        budget_bytes: int,
        name: str = "ram",
        policy: PolicyName | EvictionPolicy = "lru",
    ) -> None:
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes must be >= 0, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self.name = name
        self.policy = make_policy(policy)
        self._lock = threading.Lock()  # guards everything below; never held during a load
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()  # least recent first
        self._key_locks: dict[CacheKey, _KeyLock] = {}
        # Storage -> [bytes, number of entries holding it]: the union over all entries.
        self._storages: dict[StorageId, list[int]] = {}
        self._bytes_in_use = 0
        self._counters = _Counters()
        self._evict_first: set[CacheKey] = set()

    # -- using models ------------------------------------------------------------------------

    def get(
        self,
        key: CacheKey,
        loader: Callable[[], T],
        *,
        size_hint: int | None = None,
        on_evict: OnEvict | None = None,
        cost_s: float | None = None,
    ) -> T:
        """The cached object, loading it on a miss. Not locked: it may be evicted later."""
        return self._acquire(key, loader, size_hint, on_evict, cost_s, lock=False)

    @contextmanager
    def use(
        self,
        key: CacheKey,
        loader: Callable[[], T],
        *,
        size_hint: int | None = None,
        on_evict: OnEvict | None = None,
        cost_s: float | None = None,
    ) -> Iterator[T]:
        """The cached object, locked (never evicted or unloaded) until the block exits.

        `size_hint`: expected bytes, to make room before loading rather than after.
        `on_evict(obj)`: called once when the entry leaves the cache (set by the loading call).
        `cost_s`: seconds it would take to load again once dropped, for the `cost` policy
        (default: how long this load took; set by the loading call).
        """
        value = self._acquire(key, loader, size_hint, on_evict, cost_s, lock=True)
        try:
            yield value
        finally:
            self._release(key)

    def _acquire(
        self,
        key: CacheKey,
        loader: Callable[[], T],
        size_hint: int | None,
        on_evict: OnEvict | None,
        cost_s: float | None,
        lock: bool,
    ) -> T:
        with self._lock:
            if key in self._entries:
                return self._hit(key, lock)
            key_lock = self._key_locks.setdefault(key, _KeyLock())
            key_lock.users += 1
        try:
            with key_lock.lock:
                return self._load(key, loader, size_hint, on_evict, cost_s, lock)
        finally:
            with self._lock:
                key_lock.users -= 1
                if key_lock.users == 0:
                    del self._key_locks[key]

    def _hit(self, key: CacheKey, lock: bool) -> Any:
        entry = self._entries[key]
        self._counters.hits += 1
        self._touch(key, entry)
        self.policy.hit(key)
        entry.locks += lock
        return entry.value

    def _load(
        self,
        key: CacheKey,
        loader: Callable[[], T],
        size_hint: int | None,
        on_evict: OnEvict | None,
        cost_s: float | None,
        lock: bool,
    ) -> T:
        """Under the key's lock: load unless another thread just did."""
        with self._lock:
            if key in self._entries:
                return self._hit(key, lock)
            self._counters.misses += 1
            evicted = self._evict(size_hint or 0, protect=None)
        # Free the evicted models before the new one takes their place.
        self._drop(evicted)

        started = time.perf_counter()
        try:
            value = loader()
            storages = storage_sizes(value)
        except BaseException as exc:
            with self._lock:
                self._counters.load_failures += 1
            # The traceback's finished frames hold the half-built model: free it now.
            traceback.clear_frames(exc.__traceback__)
            release_memory()
            raise
        load_s = time.perf_counter() - started
        entry = _Entry(value, storages, load_s, load_s if cost_s is None else cost_s)
        entry.locks, entry.on_evict = int(lock), on_evict

        with self._lock:
            self._entries[key] = entry
            self._add_storages(entry)
            self._counters.loads += 1
            self._counters.high_water_bytes = max(
                self._counters.high_water_bytes, self._bytes_in_use
            )
            evicted = self._evict(0, protect=key)
            # Told after making room, so its priority counts from the clock those evictions set.
            self.policy.loaded(key, entry.size_bytes, entry.cost_s)
            if self._bytes_in_use > self.budget_bytes:
                self._counters.over_budget_events += 1
                log.warning(
                    "%s cache over budget: %d > %d bytes; the rest is locked or just loaded",
                    self.name,
                    self._bytes_in_use,
                    self.budget_bytes,
                )
        self._drop(evicted)
        return value

    def remeasure(self, key: CacheKey) -> None:
        """Measure an entry again after it grew or shrank, and evict others if it no longer
        fits. The caller holds the entry (`use`), so it cannot be dropped meanwhile."""
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:
            return
        storages = storage_sizes(entry.value)
        with self._lock:
            if self._entries.get(key) is not entry:
                return
            self._remove_storages(entry)
            entry.storages = storages
            self._add_storages(entry)
            self.policy.resized(key, entry.size_bytes)
            self._counters.high_water_bytes = max(
                self._counters.high_water_bytes, self._bytes_in_use
            )
            evicted = self._evict(0, protect=key)
        self._drop(evicted)

    def _release(self, key: CacheKey) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry.locks -= 1
                self._touch(key, entry)
                self.policy.released(key)
            # A job let go: an over-budget cache can shrink now rather than at the next load.
            evicted = self._evict(0, protect=None)
        self._drop(evicted)

    # -- dropping models ---------------------------------------------------------------------

    def unload(self, key: CacheKey) -> bool:
        """Drop one entry and give its memory back. False if it is not cached.

        Raises EntryLocked while a job uses it.
        """
        with self._lock:
            entry = self._remove_unlocked(key, "unloading")
            if entry is None:
                return False
            self._counters.unloads += 1
        self._drop([entry])
        return True

    def clear(self) -> int:
        """Unload every entry no job holds; returns how many were unloaded."""
        with self._lock:
            dropped = [self._remove(k) for k, e in list(self._entries.items()) if not e.locks]
            self._counters.unloads += len(dropped)
        self._drop(dropped)
        return len(dropped)

    @contextmanager
    def evicting_first(self, keys: set[CacheKey]) -> Iterator[None]:
        """Within the block, room is made by evicting these entries before any other."""
        with self._lock:
            self._evict_first = set(keys)
        try:
            yield
        finally:
            with self._lock:
                self._evict_first = set()

    def _evict(self, incoming: int, protect: CacheKey | None) -> list[_Entry]:
        """Under the lock: remove unlocked entries the policy picks until `incoming` more
        bytes fit in the budget. Returns them, to be dropped outside the lock."""
        evicted: list[_Entry] = []
        while self._bytes_in_use + incoming > self.budget_bytes:
            candidates = [k for k, e in self._entries.items() if not e.locks and k != protect]
            named = [k for k in candidates if k in self._evict_first]
            victim = named[0] if named else self.policy.victim(candidates)
            if victim is None:
                break
            evicted.append(self._remove(victim, evicted=True))
            self._counters.evictions += 1
        return evicted

    def take(self, key: CacheKey) -> Any:
        """Remove an entry and hand its object to the caller, memory and all (a GPU worker
        moves a model between its RAM and VRAM tiers). None if it is not cached.

        Raises EntryLocked while a job uses it.
        """
        with self._lock:
            entry = self._remove_unlocked(key, "moving")
            if entry is None:
                return None
            self._counters.hits += 1
        return entry.value

    def _remove_unlocked(self, key: CacheKey, doing: str) -> _Entry | None:
        """Under the lock: remove an entry no job holds; None if it is not cached."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.locks:
            raise EntryLocked(f"{key.path} is in use by {entry.locks} job(s); not {doing}")
        return self._remove(key)

    def _remove(self, key: CacheKey, evicted: bool = False) -> _Entry:
        entry = self._entries.pop(key)
        self._remove_storages(entry)
        self.policy.removed(key, evicted)
        return entry

    def _remove_storages(self, entry: _Entry) -> None:
        for sid in entry.storages:
            held = self._storages[sid]
            held[1] -= 1
            if held[1] == 0:
                del self._storages[sid]
                self._bytes_in_use -= held[0]

    def _add_storages(self, entry: _Entry) -> None:
        for sid, nbytes in entry.storages.items():
            held = self._storages.setdefault(sid, [nbytes, 0])
            if held[1] == 0:
                self._bytes_in_use += nbytes
            held[1] += 1

    def _drop(self, entries: list[_Entry]) -> None:
        """Outside the lock: tell owners, drop the cache's references, return the memory."""
        if not entries:
            return
        for entry in entries:
            if entry.on_evict is not None:
                try:
                    entry.on_evict(entry.value)
                except Exception:
                    log.exception("%s cache: on_evict callback failed", self.name)
            entry.value = None  # the cache's last reference
        release_memory()

    def _touch(self, key: CacheKey, entry: _Entry) -> None:
        self._entries.move_to_end(key)
        entry.last_used = time.time()

    # -- reading -----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters and entries (least recently used first), as plain JSON-able values."""
        with self._lock:
            entries = [
                {
                    **asdict(key),
                    "tier": self.name,
                    "size_bytes": entry.size_bytes,
                    "last_used": entry.last_used,
                    "locks": entry.locks,
                    "load_s": entry.load_s,
                    "cost_s": entry.cost_s,
                }
                for key, entry in self._entries.items()
            ]
            total = sum(e["size_bytes"] for e in entries)
            return {
                "name": self.name,
                **asdict(self._counters),
                "policy": self.policy.name,
                "bytes_in_use": self._bytes_in_use,
                # Bytes counted in more than one entry's size_bytes but held once.
                "shared_bytes": total - self._bytes_in_use,
                "budget_bytes": self.budget_bytes,
                "entries": entries,
            }

    @property
    def version(self) -> int:
        """Changes whenever an entry comes or goes (loads, evictions, unloads)."""
        c = self._counters
        return c.loads + c.evictions + c.unloads

    @property
    def bytes_in_use(self) -> int:
        return self._bytes_in_use

    def keys(self) -> list[CacheKey]:
        """Cached keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
