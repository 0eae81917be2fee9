"""What the cell displays, as nbformat output objects: a display protocol without IPython.

The training image has no IPython, so the runner brings its own minimal version of the protocol
a notebook uses: an object's ``_repr_mimebundle_`` and ``_repr_*_`` methods become a mime bundle
(``text/plain`` always, from ``repr``), matplotlib figures become ``image/png``. :class:`Capture`
records each ``display(obj)`` call and the value of the cell's last expression (an
``execute_result``, like a notebook's ``Out``) in order, and hands each one to a sink (the run's
log) as it happens, so the client replays them between the printed lines where they belong.

Examples
--------
In [1]: capture = Capture()
In [2]: for code in compile_cell("print('hi')\\n6 * 7", "<cell>"):
   ...:     with capture.active():
   ...:         exec(code, {"display": capture.display})
hi
In [3]: capture.outputs
Out[3]: [{'output_type': 'execute_result', 'execution_count': None, 'data': {'text/plain': '42'}, 'metadata': {}}]
"""

from __future__ import annotations

import ast
import base64
import builtins
import importlib
import importlib.machinery
import importlib.util
import io
import json
import os
import sys
import tokenize
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import CodeType, ModuleType
from typing import Any

from batchmagic.protocol import LEFT_OPEN_MARK, VALUE_MARK

__all__ = ["Capture", "compile_cell", "mime_bundle", "active", "prepare"]

Output = dict[str, Any]

# The _repr_*_ methods a notebook front end knows, in IPython's order, with the mime type each gives.
REPR_METHODS = (
    ("_repr_html_", "text/html"),
    ("_repr_markdown_", "text/markdown"),
    ("_repr_svg_", "image/svg+xml"),
    ("_repr_png_", "image/png"),
    ("_repr_jpeg_", "image/jpeg"),
    ("_repr_latex_", "text/latex"),
    ("_repr_json_", "application/json"),
    ("_repr_javascript_", "application/javascript"),
    ("_repr_pdf_", "application/pdf"),
)
BINARY_TYPES = frozenset({"image/png", "image/jpeg", "application/pdf"})
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"  # a live widget: needs the kernel that made it

_active: Capture | None = None


def active() -> Capture | None:
    """The capture of the cell that runs now (None outside a cell): the matplotlib backend's target."""
    return _active


def mime_bundle(obj: Any, *, include: Any = None, exclude: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(data, metadata)`` for ``obj``, JSON-ready: binary types base64-encoded, ``text/plain`` always.

    A representation method that raises or returns something unusable is skipped, as IPython does.
    """
    data: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    if _is_figure(obj):
        from batchmagic.runner.plots import figure_bundle

        figure_data, figure_metadata = figure_bundle(obj)  # the notebook's figure formats (png, retina, svg)
        data.update(figure_data)
        metadata.update(figure_metadata)
    method = _method(obj, "_repr_mimebundle_")
    if method is not None:
        try:
            bundle = method(include=include, exclude=exclude)
        except Exception:
            bundle = None
        if isinstance(bundle, tuple) and len(bundle) == 2:
            bundle, extra = bundle
            if isinstance(extra, dict):
                metadata.update(extra)
        if isinstance(bundle, dict):
            for mime, value in bundle.items():
                _put(data, mime, value)
    for name, mime in REPR_METHODS:
        if mime in data:
            continue
        method = _method(obj, name)
        if method is None:
            continue
        try:
            value = method()
        except Exception:
            continue
        if isinstance(value, tuple) and len(value) == 2:  # (data, metadata), as _repr_png_ may return
            value, extra = value
            if isinstance(extra, dict):
                metadata[mime] = extra
        _put(data, mime, value)
    if "text/plain" not in data:
        try:
            data["text/plain"] = repr(obj)
        except Exception as err:
            data["text/plain"] = f"<{type(obj).__name__} object: repr failed: {err}>"
    if include:
        data = {k: v for k, v in data.items() if k in include or k == "text/plain"}
    if exclude:
        data = {k: v for k, v in data.items() if k not in exclude or k == "text/plain"}
    return data, {k: v for k, v in metadata.items() if k in data and _json_ready(v)}


def _method(obj: Any, name: str) -> Callable[..., Any] | None:
    if isinstance(obj, type):  # a class's _repr_html_ is an unbound function, not a representation
        return None
    method = getattr(obj, name, None)
    return method if callable(method) else None


def _put(data: dict[str, Any], mime: str, value: Any) -> None:
    """Store ``value`` as nbformat keeps it: base64 text for binary types, str for text, JSON for JSON."""
    if value is None:
        return
    if mime in BINARY_TYPES:
        if isinstance(value, bytes | bytearray):
            data[mime] = base64.b64encode(value).decode("ascii")
        elif isinstance(value, str):
            data[mime] = value  # already base64, as _repr_mimebundle_ gives it
    elif mime == "application/json" or mime.endswith("+json"):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                return
        if _json_ready(value):
            data[mime] = value
    elif isinstance(value, bytes):
        data[mime] = value.decode("utf-8", "replace")
    elif isinstance(value, str):
        data[mime] = value


def _json_ready(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _is_figure(obj: Any) -> bool:
    figure = sys.modules.get("matplotlib.figure")  # never import matplotlib for a cell that does not use it
    return figure is not None and isinstance(obj, figure.Figure)


#: :attr:`Capture.value` before the cell has ended on an expression (None is no value: it is never shown).
NO_VALUE: Any = object()


class Capture:
    """Records what a cell displays, in order, and passes each output to ``sink`` as it happens.

    Parameters
    ----------
    sink : callable, optional
        Called with each output object (a dict) the moment it is made: the runner logs it, so
        the client can replay it between the lines printed before and after it.
    keep_value : bool
        Keep the last expression's value in :attr:`value` and mark its ``execute_result`` with
        ``protocol.VALUE_MARK``: a single cell's value travels back to be the notebook's ``Out[n]``.
    """

    def __init__(self, sink: Callable[[Output], None] | None = None, *, keep_value: bool = False) -> None:
        self.outputs: list[Output] = []
        self.value: Any = NO_VALUE  # with keep_value: the last expression's value, to travel as the cell's Out
        self._sink = sink
        self._keep_value = keep_value
        self._shown: set[int] = set()  # ids of figures displayed (not shown again when the cell ends)
        self._said_widgets = False

    def _emit(self, output: Output) -> None:
        for stream in (sys.stdout, sys.stderr):  # what was printed before comes before
            try:
                stream.flush()
            except Exception:
                pass
        self.outputs.append(output)
        if self._sink is not None:
            self._sink(output)

    def display(
        self,
        *objs: Any,
        include: Any = None,
        exclude: Any = None,
        metadata: dict[str, Any] | None = None,
        raw: bool = False,
        **kwargs: Any,
    ) -> None:
        """Display each object, as ``IPython.display.display`` does (``display_id``, ``clear`` are ignored)."""
        for obj in objs:
            if raw:
                data: dict[str, Any] = {}
                for mime, value in dict(obj).items():
                    _put(data, mime, value)
                meta: dict[str, Any] = {}
            else:
                data, meta = mime_bundle(obj, include=include, exclude=exclude)
                if _is_figure(obj):
                    self._shown.add(id(obj))
                if WIDGET_VIEW in data:
                    static = self._static_widget(data)
                    if static is None:
                        continue
                    data = static
            if metadata:
                meta = {**meta, **{k: v for k, v in metadata.items() if _json_ready(v)}}
            self._emit({"output_type": "display_data", "data": data, "metadata": meta})

    def _static_widget(self, data: dict[str, Any]) -> dict[str, Any] | None:
        """A widget cannot stay live once the remote cell has ended (no kernel holds its state): say so
        once per cell, and keep what it shows without a kernel (HTML, an image), if anything."""
        if not self._said_widgets:
            self._said_widgets = True
            print(
                "batchmagic: widgets cannot stay live after the remote cell ends: what they show as it ran is "
                "printed or displayed below; make them in a cell of their own to interact",
                file=sys.stderr,
            )
        static = {k: v for k, v in data.items() if k not in (WIDGET_VIEW, "text/plain")}
        return {**static, "text/plain": ""} if static else None

    def displayhook(self, value: Any) -> None:
        """``sys.displayhook`` while the cell runs: its last expression's value becomes an ``execute_result``."""
        if value is None:
            return
        data, meta = mime_bundle(value)
        if _is_figure(value):
            self._shown.add(id(value))
        if WIDGET_VIEW in data:  # a widget as the cell's value (interactive(...) on the last line)
            static = self._static_widget(data)
            if static is None:
                return
            data = static
        elif self._keep_value:  # a widget cannot be the notebook's Out: it stays a display
            self.value = value
            meta = {**meta, VALUE_MARK: True}
        self._emit({"output_type": "execute_result", "execution_count": None, "data": data, "metadata": meta})

    def show_figures(self, *, only_new: bool = False) -> None:
        """Display every open pyplot figure and close it (``plt.show()``; with ``only_new``, the end of the cell)."""
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None:
            return
        from matplotlib._pylab_helpers import Gcf

        for manager in Gcf.get_all_fig_managers():
            figure = manager.canvas.figure
            if not (only_new and id(figure) in self._shown):
                try:
                    self.display(figure, metadata={LEFT_OPEN_MARK: True} if only_new else None)
                except Exception as err:  # one figure that cannot render must not lose the cell's result
                    print(f"batchmagic: could not render figure {manager.num}: {err!r}", file=sys.stderr)
        pyplot.close("all")

    @contextmanager
    def active(self) -> Iterator[Capture]:
        """Make this the capture that ``sys.displayhook``, ``plt.show()`` and IPython's display reach."""
        global _active
        saved_hook, saved_active = sys.displayhook, _active
        sys.displayhook = self.displayhook
        _active = self
        try:
            yield self
        finally:
            sys.displayhook, _active = saved_hook, saved_active


def compile_cell(source: str, filename: str, *, first_line: int = 1) -> list[CodeType]:
    """The cell as code objects to exec in turn; a final expression statement is compiled so that its
    value reaches ``sys.displayhook`` (IPython's ``last_expr``), unless a ``;`` ends the cell. Its lines
    are numbered from ``first_line``."""
    tree = ast.parse(source, filename)
    if first_line > 1:
        ast.increment_lineno(tree, first_line - 1)
    last = tree.body[-1] if tree.body else None
    if not isinstance(last, ast.Expr) or _ends_with_semicolon(source):
        return [compile(tree, filename, "exec", dont_inherit=True)]
    flags = _future_flags(tree)
    head = ast.Module(body=tree.body[:-1], type_ignores=[])
    return [
        compile(head, filename, "exec", dont_inherit=True),
        compile(ast.Interactive(body=[last]), filename, "single", flags=flags, dont_inherit=True),
    ]


def _future_flags(tree: ast.Module) -> int:
    """The compiler flags of the cell's ``from __future__`` imports, for its last expression too."""
    future = importlib.import_module("__future__")
    flags = 0
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            for alias in node.names:
                feature = getattr(future, alias.name, None)
                flags |= getattr(feature, "compiler_flag", 0)
    return flags


def _ends_with_semicolon(source: str) -> bool:
    if ";" not in source:  # most cells: not tokenized (its first use compiles a regex, 2 ms of a runner's start)
        return False
    skip = {tokenize.NEWLINE, tokenize.NL, tokenize.COMMENT, tokenize.ENDMARKER, tokenize.INDENT, tokenize.DEDENT}
    last = None
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type not in skip:
                last = token
    except (tokenize.TokenError, SyntaxError):
        return False
    return last is not None and last.type == tokenize.OP and last.string == ";"


def _display(*objs: Any, **kwargs: Any) -> None:
    """``display`` for the cell: to the active capture, or ``print`` outside a cell (as IPython does)."""
    capture = _active
    if capture is None:
        print(*objs)
        return
    capture.display(*objs, **kwargs)


# --- IPython, where the image has it: its display() reaches our capture ---

_IPYTHON_DISPLAY = "IPython.core.display_functions"


def _clear_output(wait: bool = False) -> None:
    """``clear_output``: what the remote cell showed is already in the notebook, and stays there. (Outside
    a kernel IPython's own prints ``\x1b[2K\r``, which would reach the notebook as stray characters.)"""


def _patch_ipython(module: ModuleType) -> None:
    module.display = _display  # type: ignore[attr-defined]
    module.clear_output = _clear_output  # type: ignore[attr-defined]
    for name in ("IPython.display", "IPython.core.display"):
        if getattr(sys.modules.get(name), "display", None) is not None:
            sys.modules[name].display = _display  # type: ignore[attr-defined]
            sys.modules[name].clear_output = _clear_output  # type: ignore[attr-defined]


# The import hooks are plain classes with the methods the import system calls (importlib.abc's bases would
# cost every runner 1.5 ms of imports).
class _PatchingLoader:
    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)  # type: ignore[no-any-return]

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _patch_ipython(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename...: the real loader's
        return getattr(self._loader, name)


class _IPythonHook:
    """Patches IPython's ``display`` the moment it is imported: no IPython import for cells without it."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != _IPYTHON_DISPLAY:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchingLoader(spec.loader)  # type: ignore[assignment]  # a loader by its methods
        return spec


def install_ipython_hook() -> None:
    """Route ``IPython.display.display`` to the active capture, now or when the cell imports IPython."""
    if _IPYTHON_DISPLAY in sys.modules:
        _patch_ipython(sys.modules[_IPYTHON_DISPLAY])
    elif not any(isinstance(f, _IPythonHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _IPythonHook())


MPL_BACKEND = "module://batchmagic.runner.mpl_backend"


def prepare() -> None:
    """Before the cell's values are loaded: ``display`` as a builtin (as in IPython, so shipped functions
    find it too; the cell's own ``display`` wins), IPython's ``display`` routed here, and matplotlib's
    backend set to ours, if matplotlib is installed (the kernel's inline backend would need IPython)."""
    if not hasattr(builtins, "display"):
        builtins.display = _display  # type: ignore[attr-defined]
    install_ipython_hook()
    if importlib.util.find_spec("matplotlib") is not None:
        os.environ["MPLBACKEND"] = MPL_BACKEND
        if "matplotlib" in sys.modules:
            sys.modules["matplotlib"].use(MPL_BACKEND)
