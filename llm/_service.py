"""The LLMService protocol of the user's guide, and ``Place``, the path-carrying name it is given.

The guide's services take one bare name per call (``get_districts(city)``), but a name is not
an identity: 朝阳区 is in 北京市 and in 长春市. So the system passes each argument as a
``Place``: a ``str`` equal to (and hashing as) the bare name, so services written against plain
strings keep working, that also carries its full ``path``. Path-aware services read it.

The system calls only ``fetch_children(path)``, which dispatches to the four guide methods and
validates what they return, whatever the backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Self

from events import LEVELS

from ._divisions import Divisions
from ._errors import LLMError
from ._names import validate_names
from ._usage import Names, usage_of

__all__ = ["LEVELS", "LLMService", "Place", "child_level"]


def child_level(path: Sequence[str]) -> str:
    """The level of the children fetched for the node at ``path``: () -> "province",
    a 3-name district path -> "hospital"."""
    if len(path) >= len(LEVELS):
        raise ValueError(f"a {LEVELS[-1]} has no children to fetch: {'/'.join(path)}")
    return LEVELS[len(path)]


class Place(str):
    """A node's name that also knows where it is.

    >>> p = Place("朝阳区", ("吉林省", "长春市", "朝阳区"), adcode="220104")
    >>> p == "朝阳区", p.parent, p.level
    (True, ('吉林省', '长春市'), 'district')

    Two Places with the same name but different paths compare equal, as their names do: compare
    ``.path`` when identity matters.
    """

    _path: tuple[str, ...]
    _adcode: str | None

    def __new__(
        cls, name: str, path: Sequence[str] | None = None, adcode: str | None = None
    ) -> Place:
        self = super().__new__(cls, name)
        full = (str(name),) if path is None else tuple(str(part) for part in path)
        if not full or full[-1] != name or len(full) > len(LEVELS):
            raise ValueError(
                f"path {full!r} must end with the place's own name {name!r} and have at most "
                f"{len(LEVELS)} names"
            )
        self._path = full
        self._adcode = adcode
        return self

    @property
    def path(self) -> tuple[str, ...]:
        """Full path from the province down to and including this place."""
        return self._path

    @property
    def adcode(self) -> str | None:
        """The 6-digit GB/T 2260 code, when the place is a known division."""
        return self._adcode

    @property
    def parent(self) -> tuple[str, ...]:
        """Path of the parent node (``()`` for a province)."""
        return self._path[:-1]

    @property
    def level(self) -> str:
        """The place's own level (one of ``LEVELS``), from the length of its path."""
        return LEVELS[len(self._path) - 1]

    def __repr__(self) -> str:
        return f"Place({str(self)!r}, path={self._path!r}, adcode={self._adcode!r})"

    def __reduce__(self) -> tuple[type[Place], tuple[str, tuple[str, ...], str | None]]:
        return (Place, (str(self), self._path, self._adcode))


class LLMService:
    """Base class of every backend: override the ``get_*`` methods you can answer.

    Each method receives a ``Place`` (a ``str``) and returns the names one level down. The
    guide's example works as written::

        class CustomLLMService(LLMService):
            async def get_provinces(self):
                return await your_custom_api_call()

            async def get_cities(self, province):
                return await your_custom_api_call(province)

    Raise the errors of ``llm._errors`` so the caller knows whether to retry.
    """

    max_items: int = 500
    """Most distinct names one answer may hold; more is rejected as malformed."""

    eager_start: bool = False
    """With ``any_event_loop``: True if a call's first step may run before an asyncio Task
    exists for it (the coroutine calls nothing that needs ``asyncio.current_task()``, such as
    ``asyncio.timeout()``, before its first ``await`` suspends). A call that then completes
    without suspending skips the event loop altogether, as Python 3.12's eager tasks do."""

    any_event_loop: bool = False
    """True if calls may run on several event loops at once: the service holds nothing bound
    to a loop (no ``httpx.AsyncClient`` made in ``__init__``, say). The fetch pool then runs
    each call on its fetch actor's own loop, saving two thread hops per call. The default,
    False, runs every call on one shared loop, which is right for any service."""

    def _missing(self, method: str) -> NotImplementedError:
        return NotImplementedError(
            f"{type(self).__name__} does not implement {method}(); override it in your "
            "LLMService subclass to refresh this level"
        )

    async def get_provinces(self) -> list[str]:
        """Names of all provincial-level divisions."""
        raise self._missing("get_provinces")

    async def get_cities(self, province: str) -> list[str]:
        """Names of the city-level divisions of ``province``."""
        raise self._missing("get_cities")

    async def get_districts(self, city: str) -> list[str]:
        """Names of the district-level divisions of ``city``."""
        raise self._missing("get_districts")

    async def get_hospitals(self, district: str) -> list[str]:
        """Names of the hospitals of ``district``."""
        raise self._missing("get_hospitals")

    async def fetch_children(self, path: Sequence[str]) -> list[str]:
        """The validated child names of the node at ``path`` (``()`` is the country).

        Dispatches on the path's length to the matching ``get_*`` method, passing a ``Place``;
        the answer goes through ``validate_names``, so a malformed one raises
        ``LLMMalformedOutput`` whatever the backend. The result is a ``Names`` list carrying the
        token usage the backend reported with its answer (zero if it reported none).
        """
        key = tuple(path)
        child_level(key)  # rejects a path too deep before any call is made
        if not key:
            raw = await self.get_provinces()
        else:
            place = Place(key[-1], key, Divisions.load().adcode(key))
            getters = (self.get_cities, self.get_districts, self.get_hospitals)
            raw = await getters[len(key) - 1](place)
        try:
            return Names(validate_names(raw, max_items=self.max_items), usage_of(raw))
        except LLMError as exc:
            exc.usage = usage_of(raw)  # a rejected answer was paid for too
            raise

    async def aclose(self) -> None:
        """Release whatever the backend holds (connections...); a no-op by default."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
