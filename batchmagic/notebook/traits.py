"""The ``AzBatch`` traits, made from :data:`batchmagic.settings.SETTINGS`.

One trait per setting marked ``trait`` (``%config AzBatch.<name>``, ``c.AzBatch.<name>`` in
ipython_config.py), with its help and default; the environment's value seeds the default of those with
a variable; the kinds that parse (durations, amounts, ports, backends) are checked as they are set. The
magics class inherits them from :func:`settings_traits` and turns them back into one
:class:`~batchmagic.config.Settings` with :func:`settings_from_traits`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from traitlets import Dict, Enum, HasTraits, Integer, TraitError, TraitType, Unicode, Union, default, validate
from traitlets.config import Configurable

from batchmagic.config import Settings, check_port, parse_budget, parse_size, parse_timeout
from batchmagic.errors import ConfigError
from batchmagic.settings import SETTINGS, Setting

__all__ = ["settings_traits", "settings_from_traits", "trait_value", "setting_value"]


def _help(setting: Setting) -> str:
    if setting.variable:
        return f"{setting.help} Defaults to {setting.variable}, else {_plain(setting.default_text)}."
    return f"{setting.help} Default: {_plain(setting.default_text)}."


def _plain(markdown: str) -> str:
    return markdown.replace("`", "")


def _trait(setting: Setting) -> TraitType[Any, Any]:
    """The trait of ``setting``, as ``%config`` and ipython_config.py set it."""
    help = _help(setting)
    if setting.kind in ("count", "port"):
        trait: TraitType[Any, Any] = Integer(int(str(setting.default)), help=help)
    elif setting.kind == "choice":
        trait = Enum(setting.choices, default_value=setting.default, help=help)
    elif setting.kind == "prices":
        trait = Union([Unicode(), Dict()], default_value=setting.default, help=help)
    else:
        trait = Unicode(str(setting.default), help=help)
    return trait.tag(config=True)


def trait_value(setting: Setting, value: Any) -> Any:
    """A :class:`Settings` value as ``setting``'s trait holds it (a path as text, no budget as "")."""
    if setting.kind == "path":
        return str(value)
    if setting.kind == "money":
        return "" if value is None else str(value)
    if setting.kind == "size":
        return f"{value // 10**6}MB" if value and value % 10**6 == 0 else str(value)
    return value


def setting_value(setting: Setting, value: Any) -> Any:
    """A trait's value as :class:`Settings` holds it (a duration in seconds, an amount, prices as JSON)."""
    if setting.kind == "duration":
        return parse_timeout(value)
    if setting.kind == "money":
        return parse_budget(value)
    if setting.kind == "size":
        return parse_size(value, f"AzBatch.{setting.name}")
    if setting.kind == "prices" and isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def _checked(setting: Setting, value: Any) -> Any:
    """``value`` for ``setting``'s trait, or TraitError with the one line that says what is wrong."""
    where = f"AzBatch.{setting.name}"
    try:
        if setting.kind == "backend":
            value = str(value).lower()
            if value not in setting.choices:
                raise ConfigError(f"{where} must be one of {', '.join(setting.choices)}, not {value!r}")
            return value
        if setting.kind == "port":
            return check_port(int(value), where)
        if setting.kind in ("duration", "money", "size"):
            setting_value(setting, value)
            return str(value)
    except ConfigError as err:
        raise TraitError(str(err).replace("--budget", where)) from None
    return value


def _seed(setting: Setting) -> Callable[[Any], Any]:
    def seeded(self: Any) -> Any:
        return trait_value(setting, getattr(self._env, setting.name))

    return default(setting.name)(seeded)  # type: ignore[no-any-return]


def _check(setting: Setting) -> Callable[[Any, Any], Any]:
    def check(self: Any, proposal: Any) -> Any:
        return _checked(setting, proposal["value"])

    return validate(setting.name)(check)  # type: ignore[no-any-return]


def settings_traits() -> type[Configurable]:
    """A Configurable with every setting's trait, for the magics class to inherit.

    Seeded defaults read ``self._env``: the :class:`Settings` the environment gives, which the
    inheriting class provides.
    """
    namespace: dict[str, Any] = {}
    for setting in SETTINGS:
        if not setting.trait:
            continue
        namespace[setting.name] = _trait(setting)
        if setting.variable and setting.in_settings:
            namespace[f"_default_{setting.name}"] = _seed(setting)
        if setting.kind in ("backend", "port", "duration", "money", "size"):
            namespace[f"_check_{setting.name}"] = _check(setting)
    return type("SettingTraits", (Configurable,), namespace)


def settings_from_traits(traits: HasTraits, environment: Settings, *, backend_chosen: bool) -> Settings:
    """The traits resolved into one :class:`Settings` over ``environment`` (secrets and the limits only
    the environment sets come from it, never traits)."""
    kept: dict[str, Any] = {}  # "" leaves the environment's value
    exact: dict[str, Any] = {}  # "" clears it
    for setting in SETTINGS:
        if setting.trait and setting.in_settings:
            value = setting_value(setting, getattr(traits, setting.name))
            (exact if setting.clears else kept)[setting.name] = value
    return environment.with_overrides(backend_chosen=backend_chosen, **kept).with_values(**exact)
