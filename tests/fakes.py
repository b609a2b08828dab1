"""Fakes at the LLM boundary: a scripted, recording ``LLMService`` and small synthetic trees.

Everything above the LLM protocol (actors, journal, log, TaskManager) runs for real in tests;
only the answers of the LLM are made up here, so that a test can count calls in flight, hold a
call open, or make a node fail on purpose.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from llm import LLMService, Place

Path = tuple[str, ...]
Tree = dict[Path, tuple[str, ...]]
ErrorScript = Callable[[int], BaseException | None]
"""Given the 1-based number of this call for a path, the error to raise (None: answer)."""


def make_tree(
    provinces: Iterable[str],
    cities: int = 2,
    districts: int = 2,
    hospitals: int = 2,
    district_names: Sequence[str] = ("东区", "西区", "南区", "北区", "中区", "新区"),
) -> Tree:
    """A synthetic tree under each province, ``path -> children``, parents before children.

    Cities are ``{province}第{n}市``; districts reuse the same names in every city (as 朝阳区 and
    鼓楼区 do for real), so only the path tells them apart; hospitals name their whole path.
    """
    tree: Tree = {}
    for province in provinces:
        city_names = tuple(f"{province[:2]}第{c + 1}市" for c in range(cities))
        tree[(province,)] = city_names
        for city in city_names:
            tree[(province, city)] = tuple(district_names[:districts])
            for district in district_names[:districts]:
                tree[(province, city, district)] = tuple(
                    f"{city}{district}医院{h + 1}" for h in range(hospitals)
                )
    return tree


def calls_in(tree: Mapping[Path, Sequence[str]], root: Path) -> int:
    """How many LLM calls a task rooted at ``root`` makes on the whole of ``tree``: one per node
    with a list to fetch (the country for a full task, then every province, city and district)."""
    below = sum(1 for path in tree if path[: len(root)] == root and len(path) <= 3)
    return below + (1 if root == () else 0)


@dataclass(frozen=True, slots=True)
class Call:
    """One call the service received: the node's path, when it started, how it ended."""

    path: Path
    started: float
    ended: float | None = None
    error: str | None = None


class FakeLLMService(LLMService):
    """A path-aware fake that answers from ``tree`` and records every call.

    - ``provinces``: what ``get_provinces()`` answers (default: the provinces of ``tree``);
    - ``delay``: seconds every call sleeps (``delays`` overrides it per path);
    - ``errors``: per path, a script giving the error of its n-th call (see ``ErrorScript``);
    - ``hold``: calls whose path this predicate accepts wait until :meth:`release`.

    ``in_flight``/``max_in_flight`` count calls between entry and return under a lock, so they
    measure the real concurrency the system allows, whatever its own counters say.
    """

    def __init__(
        self,
        tree: Mapping[Path, Sequence[str]],
        *,
        provinces: Sequence[str] | None = None,
        delay: float = 0.0,
        delays: Mapping[Path, float] | None = None,
        errors: Mapping[Path, ErrorScript] | None = None,
        hold: Callable[[Path], bool] | None = None,
    ) -> None:
        self.tree = {tuple(k): tuple(v) for k, v in tree.items()}
        self.provinces = (
            tuple(provinces) if provinces is not None else tuple(p[0] for p in tree if len(p) == 1)
        )
        self.delay = delay
        self.delays = dict(delays or {})
        self.errors = dict(errors or {})
        self.hold = hold
        self._released = threading.Event()
        self._lock = threading.Lock()
        self.calls: list[Call] = []
        self.attempts: Counter[Path] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.args: list[Place | None] = []

    # --- the guide's four methods, each given a Place ----------------------------------------

    async def get_provinces(self) -> list[str]:
        return await self._answer((), None)

    async def get_cities(self, province: str) -> list[str]:
        return await self._answer(self._path(province), province)

    async def get_districts(self, city: str) -> list[str]:
        return await self._answer(self._path(city), city)

    async def get_hospitals(self, district: str) -> list[str]:
        return await self._answer(self._path(district), district)

    # --- what tests read ---------------------------------------------------------------------

    def release(self) -> None:
        """Let every held call (and every later one) go on."""
        self._released.set()

    def paths(self) -> list[Path]:
        """The path of every call, in the order the calls started."""
        with self._lock:
            return [call.path for call in self.calls]

    def calls_under(self, root: Path) -> list[Call]:
        """The calls made for nodes at or under ``root``, in the order they started."""
        with self._lock:
            return [c for c in self.calls if c.path[: len(root)] == root]

    def held(self) -> int:
        """Calls in flight right now."""
        with self._lock:
            return self.in_flight

    # --- machinery ---------------------------------------------------------------------------

    @staticmethod
    def _path(place: str) -> Path:
        if not isinstance(place, Place):
            raise TypeError(f"expected a Place carrying its path, got {place!r}")
        return place.path

    async def _answer(self, path: Path, place: Place | None) -> list[str]:
        with self._lock:
            self.attempts[path] += 1
            attempt = self.attempts[path]
            index = len(self.calls)
            self.calls.append(Call(path, time.monotonic()))
            self.args.append(place)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        error: BaseException | None = None
        try:
            if self.hold is not None and self.hold(path):
                while not self._released.is_set():
                    await asyncio.sleep(0.002)
            wait = self.delays.get(path, self.delay)
            if wait:
                await asyncio.sleep(wait)
            script = self.errors.get(path)
            error = script(attempt) if script is not None else None
            if error is not None:
                raise error
            if path and path not in self.tree:
                raise KeyError(f"the fake tree has no node {path!r}")
            return list(self.provinces) if not path else list(self.tree[path])
        finally:
            with self._lock:
                self.in_flight -= 1
                call = self.calls[index]
                self.calls[index] = Call(
                    call.path,
                    call.started,
                    time.monotonic(),
                    None if error is None else repr(error),
                )


def fail_first(n: int, make: Callable[[], BaseException]) -> ErrorScript:
    """An ``ErrorScript`` failing the first ``n`` calls with ``make()``, then answering."""
    return lambda attempt: make() if attempt <= n else None


def fail_always(make: Callable[[], BaseException]) -> ErrorScript:
    """An ``ErrorScript`` failing every call with ``make()``."""
    return lambda attempt: make()
