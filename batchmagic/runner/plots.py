"""The notebook's plot settings in the runner: applied once matplotlib is imported, and the inline
backend's figure formats used when a figure is displayed (see :mod:`batchmagic.package.plots`).

A cell that never imports matplotlib never pays for it: the settings wait for the import (an import
hook, as :func:`batchmagic.runner.display.install_ipython_hook` does for IPython).
"""

from __future__ import annotations

import base64
import importlib.machinery
import io
import sys
from types import ModuleType
from typing import Any

from batchmagic.package.plots import PlotSettings, decode

__all__ = ["apply", "figure_bundle"]

_settings: PlotSettings = {}


def apply(text: str) -> None:
    """Take the manifest's plot settings: into matplotlib's rcParams now, or the moment it is imported."""
    global _settings
    _settings = decode(text) if text else {}
    if not _settings.get("rc"):
        return
    if "matplotlib" in sys.modules:
        _apply_rc(sys.modules["matplotlib"])
    elif not any(isinstance(f, _MatplotlibHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _MatplotlibHook())


def _apply_rc(mpl: ModuleType) -> None:
    for key, value in _settings.get("rc", {}).items():
        try:
            mpl.rcParams[key] = value
        except Exception as err:  # a setting this matplotlib does not know: the others still apply
            print(f"batchmagic: plot setting {key} = {value!r} does not apply here: {err}", file=sys.stderr)


def figure_bundle(fig: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """A figure as the notebook's inline backend shows it: its formats (png by default; retina: png at twice
    the dpi, shown at half size; svg; jpeg) and its print kwargs (a tight bounding box by default); a figure
    with nothing on it has no image (``<Figure size 640x480 with 0 Axes>`` alone)."""
    if not fig.axes and not fig.lines:  # nothing drawn: IPython shows its text, not a blank image
        return {}, {}
    formats = _settings.get("formats") or ["png"]
    kwargs = {"bbox_inches": "tight", **_settings.get("print_figure_kwargs", {})}
    kwargs.setdefault("facecolor", fig.get_facecolor())
    kwargs.setdefault("edgecolor", fig.get_edgecolor())
    data: dict[str, str] = {}
    metadata: dict[str, Any] = {}
    for fmt in formats:
        if fmt in ("retina", "png2x"):
            png = _render(fig, "png", dpi=2 * fig.dpi, **kwargs)
            data["image/png"] = base64.b64encode(png).decode("ascii")
            width, height = _png_size(png)
            metadata["image/png"] = {"width": width // 2, "height": height // 2}
        elif fmt == "png":
            data["image/png"] = base64.b64encode(_render(fig, "png", **kwargs)).decode("ascii")
        elif fmt == "svg":
            data["image/svg+xml"] = _render(fig, "svg", **kwargs).decode("utf-8")
        elif fmt in ("jpg", "jpeg"):
            data["image/jpeg"] = base64.b64encode(_render(fig, "jpeg", **kwargs)).decode("ascii")
    if not data:
        data["image/png"] = base64.b64encode(_render(fig, "png", **kwargs)).decode("ascii")
    return data, metadata


def _render(fig: Any, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    fig.canvas.print_figure(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _png_size(png: bytes) -> tuple[int, int]:
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")  # the IHDR chunk


class _Loader:  # plain, as runner.display's hooks
    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)  # type: ignore[no-any-return]

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _apply_rc(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _MatplotlibHook:
    """Applies the settings right after ``import matplotlib``, before pyplot reads them."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != "matplotlib":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)  # type: ignore[assignment]  # a loader by its methods
        return spec
