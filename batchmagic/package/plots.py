"""The notebook's plot settings, so that remote figures look as local ones do.

Earlier cells may have changed matplotlib's settings: ``plt.style.use('ggplot')``, ``plt.rc('font',
size=14)``, ``mpl.rcParams['figure.dpi'] = 150``, or the inline backend's ``figure_formats``
(``%config InlineBackend.figure_format = 'retina'``) and ``print_figure_kwargs``. :func:`plot_settings`
takes those that differ from matplotlib's defaults, only when this kernel has imported matplotlib
(nothing is imported for it), and the runner applies them before the cell (:mod:`batchmagic.runner.plots`).

They travel as one base64 pickle in the bundle's manifest (rc values are tuples, colours, cyclers:
not JSON), written by this client and read by its own runner.
"""

from __future__ import annotations

import base64
import pickle
import sys
from typing import Any

__all__ = ["kernel_backend", "plot_settings", "PlotSettings", "static_figures_note"]

#: Settings that describe this process, not how a figure looks.
_NOT_LOOKS = frozenset(
    {"backend", "backend_fallback", "interactive", "toolbar", "timezone", "savefig.directory", "figure.raise_window"}
)
_NOT_LOOKS_PREFIXES = ("webagg.", "tk.", "macosx.", "keymap.")

PlotSettings = dict[str, Any]  # {"rc": {name: value}, "formats": [...], "print_figure_kwargs": {...}}


def plot_settings() -> str:
    """The notebook's changed plot settings, encoded for the manifest ("" when there are none, or when
    matplotlib was never imported here)."""
    mpl = sys.modules.get("matplotlib")
    if mpl is None:
        return ""
    settings: PlotSettings = {"rc": _changed_rc(mpl)}
    settings.update(_inline_backend())
    if not any(settings.values()):
        return ""
    try:
        return base64.b64encode(pickle.dumps(settings, protocol=5)).decode("ascii")
    except Exception as err:  # a setting that does not pickle: figures look as the defaults make them
        import logging  # here: the runner imports this module to decode, and logging costs it 2 ms

        logging.getLogger("batchmagic.package.plots").warning(
            "the notebook's plot settings cannot travel (%s); remote figures use matplotlib's defaults", err
        )
        return ""


def kernel_backend() -> str | None:
    """This kernel's matplotlib backend as set (``nbAgg``, ``module://ipympl.backend_nbagg``...), read without
    resolving it (reading ``rcParams['backend']`` may import pyplot); None before matplotlib is imported."""
    mpl = sys.modules.get("matplotlib")
    if mpl is None:
        return None
    backend = dict.__getitem__(mpl.rcParams, "backend")
    return backend if isinstance(backend, str) else None


def static_figures_note(backend: str | None, displays: list[dict[str, Any]]) -> str:
    """The line for a kernel whose figures are live (``%matplotlib notebook``, ``%matplotlib widget``) when a
    remote cell's ``displays`` hold figures: they came back as images, as the inline backend shows them, and
    are not open here for a later cell to change. "" when ``backend`` (this kernel's matplotlib backend, None
    when it never imported matplotlib) draws images anyway, or when the cell showed no figure."""
    name = (backend or "").lower()  # as %matplotlib set it: "notebook" or "nbAgg"; "widget", "ipympl" or its module
    if name not in ("notebook", "widget") and not any(word in name for word in ("nbagg", "ipympl")):
        return ""
    if not any(_is_figure(output) for output in displays):
        return ""
    magic = "%matplotlib notebook" if name in ("notebook", "nbagg") else "%matplotlib widget"
    return (
        f"batchmagic: this kernel draws live figures ({magic}); the remote cell's came back as images, as "
        "%matplotlib inline shows them, and are not open here for a later cell to change: plot in a cell of "
        "its own, from the results, to interact"
    )


def _is_figure(output: dict[str, Any]) -> bool:
    data = output.get("data", {})
    return any(mime.startswith("image/") for mime in data) and str(data.get("text/plain", "")).startswith("<Figure")


def decode(text: str) -> PlotSettings:
    """What :func:`plot_settings` encoded."""
    value: PlotSettings = pickle.loads(base64.b64decode(text))  # noqa: S301 - our own manifest, checked by hash
    return value


def _changed_rc(mpl: Any) -> dict[str, Any]:
    defaults = mpl.rcParamsDefault
    changed = {}
    for key in dict.keys(mpl.rcParams):
        if key in _NOT_LOOKS or key.startswith(_NOT_LOOKS_PREFIXES):
            continue
        value = dict.__getitem__(mpl.rcParams, key)
        try:
            same = bool(value == dict.__getitem__(defaults, key))
        except Exception:  # an array-like value: compare its text
            same = repr(value) == repr(dict.__getitem__(defaults, key))
        if not same:
            changed[key] = value
    return changed


def _inline_backend() -> dict[str, Any]:
    """The inline backend's figure formats and print kwargs, when this kernel has configured it."""
    inline = sys.modules.get("matplotlib_inline.backend_inline")
    if inline is None:
        return {}
    try:
        config = inline.InlineBackend.instance()
        formats = sorted(config.figure_formats)
        kwargs = dict(config.print_figure_kwargs)
    except Exception:  # no shell to configure it from: nothing set
        return {}
    out: dict[str, Any] = {}
    if formats != ["png"]:
        out["formats"] = formats
    if kwargs != {"bbox_inches": "tight"}:
        out["print_figure_kwargs"] = kwargs
    return out
