"""What Azure VMs cost per hour: a shipped, dated table, refreshable, overridable for negotiated prices.

The table (``prices.json`` beside this module) holds pay-as-you-go Linux prices per region and VM size,
dedicated and spot (Batch's low-priority nodes are billed as spot), with its source and date. Where a
price comes from, later wins:

1. the shipped table;
2. ``<home>/prices.json``, written by ``batchmagic prices update`` from Azure's public Retail Prices API;
3. the ``AzBatch.prices`` setting (``BATCHMAGIC_PRICES``): a JSON file, or the prices themselves, for
   negotiated rates. Keys are VM sizes (any region) or regions holding sizes; a value is the dedicated
   price per hour, or ``{"dedicated": ..., "spot": ...}``::

       {"Standard_E32_v3": 1.50, "westeurope": {"Standard_D2s_v3": {"dedicated": 0.09, "spot": 0.02}}}

A price nobody gives is unknown (``None``), never zero: the panel says "unknown" and ``--budget`` refuses
to start a run it cannot price.

Examples
--------
In [1]: from batchmagic.backends.azure.prices import Prices

In [2]: Prices.shipped().hourly("Standard_E32_v3", "eastus")
Out[2]: 2.016
"""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from batchmagic.errors import ConfigError

__all__ = [
    "Prices",
    "PriceTable",
    "RETAIL_PRICES_URL",
    "SHIPPED_TABLE",
    "fetch_retail_prices",
    "parse_retail_items",
    "region_from_endpoint",
    "format_money",
]

SHIPPED_TABLE = Path(__file__).with_name("prices.json")
RETAIL_PRICES_URL = "https://prices.azure.com/api/retail/prices"
#: Regions ``batchmagic prices update`` refreshes when none are named: the shipped table's.
DEFAULT_REGIONS = ("eastus", "westeurope")
_SIZE = re.compile(r"^(standard|basic)_", re.IGNORECASE)
_TIERS = ("dedicated", "spot", "low_priority")


def region_from_endpoint(endpoint: str) -> str:
    """The region of a Batch account endpoint, ``https://<account>.<region>.batch.azure.com``; "" if none."""
    host = urllib.parse.urlparse(endpoint).hostname or ""
    parts = host.split(".")
    if len(parts) >= 5 and parts[-3:] == ["batch", "azure", "com"]:
        return parts[-4].lower()
    return ""


def format_money(amount: float, currency: str = "USD") -> str:
    """``$1.23`` (USD) or ``1.23 EUR``; small amounts keep enough digits to be read."""
    digits = 2 if amount >= 0.1 or amount == 0 else 4 if amount < 0.01 else 3
    return f"${amount:,.{digits}f}" if currency == "USD" else f"{amount:,.{digits}f} {currency}"


@dataclass(frozen=True)
class PriceTable:
    """Prices per region and VM size (names as Azure spells them; looked up case-insensitively)."""

    prices: Mapping[str, Mapping[str, Mapping[str, float]]]  # region -> size -> tier -> price per hour
    currency: str = "USD"
    source: str = ""
    retrieved: str = ""  # the date the figures were read, YYYY-MM-DD

    @classmethod
    def load(cls, path: Path | str) -> PriceTable:
        """A table file as written by :meth:`dump` (ConfigError naming the file if it is not one)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls.from_json(data)
        except (OSError, ValueError, TypeError, AttributeError) as err:
            raise ConfigError(f"prices file {path} is not usable: {err}") from None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PriceTable:
        prices = {
            str(region).lower(): {
                str(size): {str(k): float(v) for k, v in tiers.items()} for size, tiers in sizes.items()
            }
            for region, sizes in data["prices"].items()
        }
        return cls(
            prices, str(data.get("currency", "USD")), str(data.get("source", "")), str(data.get("retrieved", ""))
        )

    def dump(self) -> str:
        """The file form: JSON, one VM size per line, so a refresh reads well as a diff."""
        lines = [
            "{",
            '  "format": 1,',
            f'  "source": {json.dumps(self.source)},',
            f'  "retrieved": {json.dumps(self.retrieved)},',
            f'  "currency": {json.dumps(self.currency)},',
            '  "prices": {',
        ]
        regions = sorted(self.prices)
        for i, region in enumerate(regions):
            lines.append(f"    {json.dumps(region)}: {{")
            sizes = list(self.prices[region])
            for j, size in enumerate(sizes):
                tiers = json.dumps({k: self.prices[region][size][k] for k in _TIERS if k in self.prices[region][size]})
                lines.append(f"      {json.dumps(size)}: {tiers}{',' if j < len(sizes) - 1 else ''}")
            lines.append("    }" + ("," if i < len(regions) - 1 else ""))
        lines += ["  }", "}"]
        return "\n".join(lines) + "\n"

    def entry(self, vm_size: str, region: str) -> Mapping[str, float] | None:
        sizes = self.prices.get(region.lower())
        if not sizes:
            return None
        wanted = vm_size.strip().lower()
        return next((tiers for size, tiers in sizes.items() if size.lower() == wanted), None)

    def merged(self, other: PriceTable) -> PriceTable:
        """This table with ``other``'s prices on top (its source and date win where it has any)."""
        prices: dict[str, dict[str, dict[str, float]]] = {
            r: {s: dict(t) for s, t in sizes.items()} for r, sizes in self.prices.items()
        }
        for region, sizes in other.prices.items():
            mine = prices.setdefault(region, {})
            for size, tiers in sizes.items():
                same = next((s for s in mine if s.lower() == size.lower()), size)
                mine[same] = {**mine.get(same, {}), **tiers}
        return PriceTable(
            prices, other.currency or self.currency, other.source or self.source, other.retrieved or self.retrieved
        )


@dataclass(frozen=True)
class Prices:
    """The prices in force: the table (shipped, then refreshed) and the user's overrides on top.

    Build it with :meth:`for_settings` (what a session uses) or :meth:`shipped`.
    """

    table: PriceTable
    overrides: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # region ("*": any) -> size -> price
    override_tiers: Mapping[str, Mapping[str, Mapping[str, float]]] = field(default_factory=dict)

    @classmethod
    def shipped(cls) -> Prices:
        return cls(PriceTable.load(SHIPPED_TABLE))

    @classmethod
    def for_settings(cls, home: Path | str | None = None, prices: str = "") -> Prices:
        """The shipped table, ``<home>/prices.json`` if ``batchmagic prices update`` wrote one, and
        ``prices`` (a JSON file's path or JSON text: ``AzBatch.prices``) on top.

        Raises
        ------
        ConfigError
            A prices file or setting that cannot be read, naming it.
        """
        table = PriceTable.load(SHIPPED_TABLE)
        refreshed = Path(home).expanduser() / "prices.json" if home else None
        if refreshed is not None and refreshed.is_file():
            table = table.merged(PriceTable.load(refreshed))
        return cls(table, override_tiers=_overrides(prices))

    def hourly(self, vm_size: str, region: str, *, low_priority: bool = False) -> float | None:
        """Price per hour of one node of ``vm_size`` in ``region``; ``None`` when nobody gives one.

        A low-priority node is priced as spot (Batch bills it so), else as the table's low-priority
        meter where only that is known.
        """
        tiers = ("spot", "low_priority") if low_priority else ("dedicated",)
        for entry in (
            _find(self.override_tiers.get(region.lower(), {}), vm_size),
            _find(self.override_tiers.get("*", {}), vm_size),
            self.table.entry(vm_size, region),
        ):
            if entry:
                for tier in tiers:
                    if tier in entry:
                        return float(entry[tier])
        return None

    def cost_per_hour(self, vm_size: str, region: str, *, dedicated: int = 0, low_priority: int = 0) -> float | None:
        """What ``dedicated`` + ``low_priority`` nodes of ``vm_size`` cost per hour; ``None`` when a price
        they need is unknown (never zero for a missing price)."""
        if not (dedicated or low_priority):  # holding nothing costs nothing, once the size has a price at all
            known = (
                self.hourly(vm_size, region) is not None or self.hourly(vm_size, region, low_priority=True) is not None
            )
            return 0.0 if known else None
        total = 0.0
        for count, low in ((dedicated, False), (low_priority, True)):
            if count:
                price = self.hourly(vm_size, region, low_priority=low)
                if price is None:
                    return None
                total += count * price
        return total

    @property
    def currency(self) -> str:
        return self.table.currency

    def describe(self) -> str:
        """Where the figures come from, for messages: ``USD list prices of 2026-12-01``."""
        own = " with your prices (AzBatch.prices) on top" if self.override_tiers else ""
        return f"{self.currency} list prices of {self.table.retrieved or 'unknown date'}{own}"


def _find(sizes: Mapping[str, Mapping[str, float]], vm_size: str) -> Mapping[str, float] | None:
    wanted = vm_size.strip().lower()
    return next((tiers for size, tiers in sizes.items() if size.lower() == wanted), None)


def _overrides(prices: str) -> dict[str, dict[str, dict[str, float]]]:
    """``AzBatch.prices`` (a path, or JSON text) -> region ("*" for any) -> size -> tier -> price."""
    text = prices.strip()
    if not text:
        return {}
    if text.startswith("{"):
        where = "AzBatch.prices"
        try:
            data = json.loads(text)
        except ValueError as err:
            raise ConfigError(f"AzBatch.prices is not JSON: {err}") from None
    else:
        where = f"prices file {text}"
        try:
            data = json.loads(Path(text).expanduser().read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ConfigError(f"{where} is not usable (AzBatch.prices, BATCHMAGIC_PRICES): {err}") from None
    if isinstance(data, dict) and "prices" in data:  # a whole table, as `batchmagic prices update` writes
        data = data["prices"]
    out: dict[str, dict[str, dict[str, float]]] = {}
    try:
        for key, value in dict(data).items():
            if _SIZE.match(key):
                out.setdefault("*", {})[key] = _tiers(value)
            else:
                out.setdefault(key.lower(), {}).update({size: _tiers(v) for size, v in dict(value).items()})
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f'{where}: {err}; write prices like {{"Standard_E32_v3": 1.5}} or '
            '{"westeurope": {"Standard_D2s_v3": {"dedicated": 0.09, "spot": 0.02}}}'
        ) from None
    return out


def _tiers(value: Any) -> dict[str, float]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {"dedicated": float(value)}
    tiers = {str(k): float(v) for k, v in dict(value).items()}
    unknown = set(tiers) - set(_TIERS)
    if unknown:
        raise ValueError(f"unknown price kind {sorted(unknown)[0]!r} (dedicated, spot, low_priority)")
    return tiers


# --- the Retail Prices API ---


def parse_retail_items(items: Iterable[Mapping[str, Any]], sizes: Iterable[str] | None = None) -> dict[str, Any]:
    """Retail Prices API items -> ``{region: {size: {tier: price}}}``, keeping what a Batch node costs:
    Consumption meters per hour of Linux products (a Windows product carries "Windows" in its name),
    dedicated, spot ("Spot" in the SKU name) and low priority ("Low Priority"). Where a meter appears
    twice, the latest ``effectiveStartDate`` wins. ``sizes`` (case-insensitive) keeps only those."""
    wanted = {s.lower() for s in sizes} if sizes is not None else None
    found: dict[tuple[str, str, str], tuple[str, float]] = {}
    spelled: dict[str, str] = {}
    for item in items:
        size = str(item.get("armSkuName") or "")
        region = str(item.get("armRegionName") or "").lower()
        if not size or not region or (wanted is not None and size.lower() not in wanted):
            continue
        if item.get("type") != "Consumption" or item.get("unitOfMeasure") != "1 Hour":
            continue
        if (
            "windows" in str(item.get("productName", "")).lower()
            or "cloud services" in str(item.get("productName", "")).lower()
        ):
            continue
        sku_name = str(item.get("skuName") or "")
        tier = (
            "spot"
            if sku_name.endswith("Spot")
            else "low_priority"
            if sku_name.endswith("Low Priority")
            else "dedicated"
        )
        key = (region, size.lower(), tier)
        start = str(item.get("effectiveStartDate") or "")
        price = item.get("retailPrice", item.get("unitPrice"))
        if price is None:
            continue
        if key not in found or start >= found[key][0]:
            found[key] = (start, float(price))
        spelled.setdefault(size.lower(), size)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (region, size, tier), (_start, price) in sorted(found.items()):
        out.setdefault(region, {}).setdefault(spelled[size], {})[tier] = price
    return out


Fetch = Callable[[str], Mapping[str, Any]]


def _http_get_json(url: str) -> Mapping[str, Any]:
    with urllib.request.urlopen(url, timeout=20) as response:  # noqa: S310 - a fixed https URL
        data: Mapping[str, Any] = json.loads(response.read().decode("utf-8"))
        return data


def fetch_retail_prices(
    regions: Iterable[str], sizes: Iterable[str], *, fetch: Fetch | None = None, currency: str = "USD"
) -> PriceTable:
    """A table of ``sizes`` in ``regions`` read from Azure's Retail Prices API (no authentication),
    following ``NextPageLink`` to the last page.

    Raises
    ------
    ConfigError
        The API cannot be reached or answers something else than its documented JSON: one line.
    """
    get = fetch or _http_get_json
    size_list = sorted(set(sizes))
    items: list[Mapping[str, Any]] = []
    for region in regions:
        for start in range(0, len(size_list), 15):  # keep each URL short
            chunk = size_list[start : start + 15]
            skus = " or ".join(f"armSkuName eq '{s}'" for s in chunk)
            query = (
                f"serviceName eq 'Virtual Machines' and armRegionName eq '{region}' "
                f"and priceType eq 'Consumption' and ({skus})"
            )
            url: str | None = (
                f"{RETAIL_PRICES_URL}?currencyCode='{currency}'&$filter={urllib.parse.quote(query, safe='')}"
            )
            while url:
                try:
                    page = get(url)
                    items.extend(page["Items"])
                except (OSError, ValueError, KeyError, TypeError) as err:
                    reason = getattr(err, "reason", None) or err
                    raise ConfigError(
                        f"cannot read Azure's Retail Prices API at {RETAIL_PRICES_URL} ({reason}): "
                        "the prices in use stay as they are"
                    ) from None
                url = page.get("NextPageLink") or None
    prices = parse_retail_items(items, size_list)
    return PriceTable(
        prices,
        currency,
        f"Azure Retail Prices API ({RETAIL_PRICES_URL}), Consumption meters per hour of Linux products, "
        "dedicated and spot; read by `batchmagic prices update`",
        datetime.now(UTC).strftime("%Y-%m-%d"),
    )
