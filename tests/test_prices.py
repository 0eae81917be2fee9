"""The VM price table: lookups, unknown prices, overrides, and the Retail Prices API parser on a
recorded page (written from the API's documented format: no machine here reaches the API)."""

from __future__ import annotations

import json
import re
import urllib.error
from pathlib import Path
from typing import Any

import pytest

from batchmagic import cli
from batchmagic.backends.azure import prices
from batchmagic.backends.azure.prices import Prices, PriceTable, fetch_retail_prices, format_money, region_from_endpoint
from batchmagic.backends.azure.vmsizes import VM_SIZES
from batchmagic.config import Settings, parse_budget
from batchmagic.errors import ConfigError
from batchmagic.options import RunOptions

DATA = Path(__file__).parent / "data"
PAGES = [json.loads((DATA / f"retail_prices_page{i}.json").read_text()) for i in (1, 2)]


def test_the_shipped_table_is_dated_sourced_and_covers_every_size_of_the_sizes_table() -> None:
    table = Prices.shipped().table
    assert table.retrieved == "2026-12-01" and "Retail Prices API" in table.source and table.currency == "USD"
    for region in ("eastus", "westeurope"):
        for size in VM_SIZES:
            entry = table.entry(size, region)
            assert entry is not None and entry["dedicated"] > 0 and entry["spot"] > 0, (region, size)


def test_lookup_is_case_insensitive_and_low_priority_is_priced_as_spot() -> None:
    shipped = Prices.shipped()
    assert shipped.hourly("Standard_E32_v3", "eastus") == 2.016
    assert shipped.hourly("standard_e32_v3", "EastUS") == 2.016
    assert shipped.hourly("Standard_E32_v3", "eastus", low_priority=True) == pytest.approx(0.4032)
    assert shipped.cost_per_hour("Standard_D2s_v3", "eastus", dedicated=3) == pytest.approx(0.288)
    assert shipped.cost_per_hour("Standard_D2s_v3", "eastus", dedicated=1, low_priority=2) == pytest.approx(
        0.096 + 2 * 0.0192
    )
    assert shipped.cost_per_hour("Standard_D2s_v3", "eastus") == 0.0  # holding nothing, with a known price


def test_a_price_the_table_lacks_is_unknown_never_zero() -> None:
    shipped = Prices.shipped()
    assert shipped.hourly("Standard_M416s_v2", "eastus") is None
    assert shipped.hourly("Standard_D2s_v3", "brazilsouth") is None
    assert shipped.hourly("Standard_D2s_v3", "") is None
    assert shipped.cost_per_hour("Standard_M416s_v2", "eastus", dedicated=1) is None
    assert shipped.cost_per_hour("Standard_M416s_v2", "eastus") is None  # even holding nothing: unknown


def test_overrides_win_by_size_then_region_from_json_text_or_a_file(tmp_path: Path) -> None:
    text = json.dumps({"Standard_E32_v3": 1.5, "westeurope": {"Standard_D2s_v3": {"dedicated": 0.09, "spot": 0.02}}})
    mine = Prices.for_settings(tmp_path, text)
    assert mine.hourly("Standard_E32_v3", "eastus") == 1.5
    assert mine.hourly("Standard_E32_v3", "eastus", low_priority=True) == pytest.approx(0.4032)  # table's spot
    assert mine.hourly("Standard_D2s_v3", "westeurope", low_priority=True) == 0.02
    assert mine.hourly("Standard_D2s_v3", "eastus") == 0.096
    assert "your prices" in mine.describe()
    path = tmp_path / "negotiated.json"
    path.write_text(json.dumps({"Standard_M416s_v2": 30.0}))
    assert Prices.for_settings(tmp_path, str(path)).hourly("Standard_M416s_v2", "anywhere") == 30.0
    with pytest.raises(ConfigError, match="prices file .*missing.json"):
        Prices.for_settings(tmp_path, str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="unknown price kind 'reserved'"):
        Prices.for_settings(tmp_path, json.dumps({"Standard_E32_v3": {"reserved": 1.0}}))


def test_a_refreshed_table_in_home_goes_over_the_shipped_one(tmp_path: Path) -> None:
    refreshed = PriceTable({"eastus": {"Standard_E32_v3": {"dedicated": 2.2}}}, "USD", "API", "2027-01-05")
    (tmp_path / "prices.json").write_text(refreshed.dump())
    merged = Prices.for_settings(tmp_path)
    assert merged.hourly("Standard_E32_v3", "eastus") == 2.2
    assert merged.hourly("Standard_E32_v3", "eastus", low_priority=True) == pytest.approx(0.4032)
    assert merged.hourly("Standard_D2s_v3", "westeurope") is not None
    assert merged.table.retrieved == "2027-01-05"
    assert PriceTable.load(tmp_path / "prices.json") == refreshed  # dump and load round-trip


def test_the_parser_keeps_linux_consumption_per_hour_dedicated_and_spot_latest_first() -> None:
    items = PAGES[0]["Items"] + PAGES[1]["Items"]
    parsed = prices.parse_retail_items(items)
    assert parsed["eastus"]["Standard_E32_v3"] == {"dedicated": 2.016, "spot": 0.4032, "low_priority": 0.4032}
    # The D2s v3 meter appears twice: the later effectiveStartDate wins.
    assert parsed["eastus"]["Standard_D2s_v3"] == {"dedicated": 0.1, "spot": 0.0192}
    assert parsed["westeurope"] == {"Standard_D2s_v3": {"dedicated": 0.115}}  # the Windows F16s is left out
    assert prices.parse_retail_items(items, ["standard_d2s_v3"]).keys() == {"eastus", "westeurope"}


def test_fetch_follows_next_page_link_and_builds_a_dated_table() -> None:
    asked: list[str] = []

    def fetch(url: str) -> dict[str, Any]:
        asked.append(url)
        return PAGES[0] if len(asked) == 1 else PAGES[1]

    table = fetch_retail_prices(["eastus"], ["Standard_E32_v3", "Standard_D2s_v3"], fetch=fetch)
    assert len(asked) == 2 and asked[1] == PAGES[0]["NextPageLink"]
    assert "armRegionName%20eq%20%27eastus%27" in asked[0] and "priceType%20eq%20%27Consumption%27" in asked[0]
    assert table.entry("Standard_E32_v3", "eastus") == {"dedicated": 2.016, "spot": 0.4032, "low_priority": 0.4032}
    assert table.retrieved and "Retail Prices API" in table.source


def test_prices_update_writes_the_table_and_is_one_line_when_the_api_is_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pages = iter([PAGES[0], PAGES[1]] + [{"Items": [], "NextPageLink": None}] * 10)
    monkeypatch.setattr(prices, "_http_get_json", lambda url: next(pages))
    out = tmp_path / "prices.json"
    assert cli.main(["prices", "update", "--region", "eastus", "--output", str(out)]) == 0
    assert PriceTable.load(out).entry("Standard_E32_v3", "eastus") == {
        "dedicated": 2.016,
        "spot": 0.4032,
        "low_priority": 0.4032,
    }
    assert "written to" in capsys.readouterr().out

    def unreachable(url: str) -> dict[str, Any]:
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(prices, "_http_get_json", unreachable)
    assert cli.main(["prices", "update", "--output", str(tmp_path / "other.json")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("batchmagic: cannot read Azure's Retail Prices API")
    assert not (tmp_path / "other.json").exists()


def test_budget_and_region_settings() -> None:
    assert parse_budget("5") == 5.0 and parse_budget("$12.50") == 12.5 and parse_budget(3) == 3.0
    assert parse_budget(None) is None and parse_budget("") is None
    for bad in ("five", "-1", "0"):
        with pytest.raises(ConfigError, match="--budget"):
            parse_budget(bad)
    assert RunOptions(budget="$2").budget == 2.0
    assert region_from_endpoint("https://myacct.westeurope.batch.azure.com") == "westeurope"
    assert region_from_endpoint("http://127.0.0.1:8000") == ""
    assert Settings(batch_endpoint="https://a.eastus.batch.azure.com").batch_region == "eastus"
    assert Settings(batch_endpoint="http://127.0.0.1:1", region="WestEurope").batch_region == "westeurope"
    assert format_money(2.016) == "$2.02" and format_money(0.0192) == "$0.019" and format_money(0.004) == "$0.0040"


def test_prices_ls_shows_the_prices_in_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BATCHMAGIC_HOME", str(tmp_path))
    monkeypatch.setenv("BATCHMAGIC_PRICES", json.dumps({"Standard_E32_v3": 1.5}))
    assert cli.main(["prices", "ls", "--region", "eastus"]) == 0
    captured = capsys.readouterr()
    assert "USD list prices of 2026-12-01 with your prices (AzBatch.prices) on top" in captured.err
    assert re.search(r"^eastus +Standard_E32_v3 +\$1\.50/h +spot +\$0\.40/h$", captured.out, re.M)
    assert "westeurope" not in captured.out
