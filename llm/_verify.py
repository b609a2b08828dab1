"""Names an LLM returned, checked against the packaged GB/T 2260 reference data.

An LLM can invent a city. Every province, city and district name it returns is looked up under
its parent in ``Divisions``: exactly, or by a known alias (北京 -> 北京市, 广西 -> 广西壮族自治区,
朝阳 -> 朝阳区, 延边 -> 延边朝鲜族自治州: see ``Divisions.resolve``). A matched name gets its
6-digit adcode; an unmatched one gets ``UNVERIFIED`` (""), so it stays in the tree, marked, never
silently dropped and never silently trusted. The name itself is kept as the LLM wrote it: the
journal records what was answered, the adcode records what it was matched to.

The children of an unmatched node cannot be checked (their parent is not in the data) and are
unverified too. Hospitals have no reference data: their level is not checked at all, which
``check_names`` says by returning ``()``.

>>> check_names(("北京市", "北京市"), ["朝阳区", "朝阳", "望京区"])
('110105', '110105', '')
>>> check_names(("北京市", "北京市", "朝阳区"), ["北京朝阳医院"])
()
"""

from __future__ import annotations

from collections.abc import Sequence

from events import CHECKED_LEVELS

from ._divisions import Divisions

__all__ = ["CHECKED_LEVELS", "UNVERIFIED", "check_names"]

UNVERIFIED = ""
"""The adcode of a name the reference data does not know."""


def check_names(
    path: Sequence[str], names: Sequence[str], divisions: Divisions | None = None
) -> tuple[str, ...]:
    """The adcode of each of ``names`` as a child of the node at ``path``, ``UNVERIFIED``
    where the reference data has no match; ``()`` when the children of ``path`` are hospitals.

    ``path`` may itself use aliases (("北京", "北京市") is resolved as ("北京市", "北京市")).
    Pure: the same input always gives the same output.
    """
    if len(path) >= len(CHECKED_LEVELS):
        return ()
    divisions = divisions or Divisions.load()
    parent = divisions.resolve_path(path) if path else ()
    if parent is None:
        return (UNVERIFIED,) * len(names)
    codes: list[str] = []
    for name in names:
        canonical = divisions.resolve(parent, name)
        code = None if canonical is None else divisions.adcode((*parent, canonical))
        codes.append(code or UNVERIFIED)
    return tuple(codes)
