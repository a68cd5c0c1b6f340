"""Which cached model leaves when the model cache needs room (`RENDERFARM_CACHE_POLICY`).

- `lru`: the least recently used entry no job holds.
- `cost` (the default): GreedyDual-Size-Frequency (Cherkasova 1998). Every entry has a
  priority `clock + uses x reload seconds / bytes`, set when it is loaded and each time a
  job takes or lets go of it; the lowest goes, and the clock rises to the priority of what
  was evicted. So a model used often, or slow to load again, or small, stays; a big model
  that loads quickly goes first; and a model nobody uses any more ages out as the clock
  passes it. Reload seconds are the entry's measured load time unless the cache is told
  better (a GPU worker's RAM tier weighs the disk load, not the move from VRAM).
  Use counts outlive an eviction (the last `history` keys no longer cached are
  remembered), halved each time the model is evicted: a popular model that was pushed out
  comes back ahead of one-offs, without an old count keeping it forever. Simulated over 20
  Zipf traces x 3 budgets (`python -m bench.bench_cache`, its variant table), halving came
  out as well as forgetting the count (plain GDSF) and better than keeping it whole.

The cache calls these under its own lock, and offers as candidates only entries no job
holds, least recently used first; ties go to the least recently used.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import ClassVar, Literal

PolicyName = Literal["cost", "lru"]

# Floors, so a model that loads in no time or weighs nothing still gets a finite priority.
MIN_COST_S = 1e-6
MIN_SIZE_BYTES = 1
# What an eviction leaves of a model's use count.
EVICTED_USES_KEPT = 0.5


class EvictionPolicy:
    """Told what the cache does with its entries; asked which one to evict."""

    name: ClassVar[str]

    def loaded(self, key: Hashable, size_bytes: int, cost_s: float) -> None:
        """`key` was loaded (a miss): `cost_s` is what loading it again would take."""

    def hit(self, key: Hashable) -> None:
        """A job asked for a cached `key`."""

    def released(self, key: Hashable) -> None:
        """A job let go of `key`: it was just in use."""

    def resized(self, key: Hashable, size_bytes: int) -> None:
        """`key` was measured again."""

    def removed(self, key: Hashable, evicted: bool) -> None:
        """`key` left the cache: evicted for room, or unloaded / moved out on request."""

    def victim(self, candidates: Iterable[Hashable]) -> Hashable | None:
        """The entry to evict among `candidates` (least recently used first); None if none."""
        raise NotImplementedError


class LeastRecentlyUsed(EvictionPolicy):
    name = "lru"

    def victim(self, candidates: Iterable[Hashable]) -> Hashable | None:
        return next(iter(candidates), None)


@dataclass
class _Standing:
    uses: float
    cost_s: float
    size_bytes: int
    priority: float = 0.0


class CostAware(EvictionPolicy):
    """GreedyDual-Size-Frequency with use counts that outlive an eviction (halved)."""

    name = "cost"

    def __init__(self, history: int = 1024) -> None:
        if history < 0:
            raise ValueError(f"history must be >= 0, got {history}")
        self.history = history
        self.clock = 0.0
        self._cached: dict[Hashable, _Standing] = {}
        # Use counts of keys no longer cached, oldest first; at most `history` of them.
        self._remembered: OrderedDict[Hashable, float] = OrderedDict()

    def loaded(self, key: Hashable, size_bytes: int, cost_s: float) -> None:
        uses = self._remembered.pop(key, 0.0) + 1
        standing = _Standing(uses, max(cost_s, MIN_COST_S), max(size_bytes, MIN_SIZE_BYTES))
        self._cached[key] = standing
        self._rank(standing)

    def hit(self, key: Hashable) -> None:
        standing = self._cached[key]
        standing.uses += 1
        self._rank(standing)

    def released(self, key: Hashable) -> None:
        if (standing := self._cached.get(key)) is not None:
            self._rank(standing)

    def resized(self, key: Hashable, size_bytes: int) -> None:
        standing = self._cached[key]
        standing.size_bytes = max(size_bytes, MIN_SIZE_BYTES)
        self._rank(standing)

    def removed(self, key: Hashable, evicted: bool) -> None:
        standing = self._cached.pop(key)
        uses = standing.uses
        if evicted:
            # max: a locked entry ranked before the clock last rose may be evicted later.
            self.clock = max(self.clock, standing.priority)
            uses *= EVICTED_USES_KEPT
        self._remembered[key] = uses
        while len(self._remembered) > self.history:
            self._remembered.popitem(last=False)

    def victim(self, candidates: Iterable[Hashable]) -> Hashable | None:
        return min(candidates, key=lambda k: self._cached[k].priority, default=None)

    def _rank(self, standing: _Standing) -> None:
        standing.priority = self.clock + standing.uses * standing.cost_s / standing.size_bytes

    def priority(self, key: Hashable) -> float | None:
        """A cached key's priority (None if not cached): the lowest is evicted first."""
        standing = self._cached.get(key)
        return None if standing is None else standing.priority

    def uses(self, key: Hashable) -> float:
        """How often `key` was used, as the policy counts it (cached or remembered)."""
        if (standing := self._cached.get(key)) is not None:
            return standing.uses
        return self._remembered.get(key, 0.0)


def make_policy(policy: PolicyName | EvictionPolicy) -> EvictionPolicy:
    """A policy by its setting's name, or the instance given."""
    if isinstance(policy, EvictionPolicy):
        return policy
    if policy == "cost":
        return CostAware()
    if policy == "lru":
        return LeastRecentlyUsed()
    raise ValueError(f"cache_policy must be 'cost' or 'lru', got {policy!r}")
