"""IPython syntax in a remote cell: ``%time``, ``%%time``, ``%timeit``, ``!cmd``, ``out = !cmd``.

A notebook cell is IPython, not Python. :func:`to_python` turns it into Python with IPython's own input
transformers (what the kernel does before it compiles a cell), so that the analysis sees what the
kernel would run, and the runner runs the same (in a minimal IPython shell: see
:mod:`batchmagic.runner.ipyshell`).

The transformed cell calls ``get_ipython().run_line_magic('time', 's = sum(xs)')``: the code a magic
runs is a string, which the analysis cannot see into. :func:`for_analysis` puts the code of the
magics that run Python in the notebook's namespace back in its place (``%time STMT`` -> ``STMT``;
``%%time`` -> its body; ``%timeit STMT`` -> a function that reads what ``STMT`` reads and binds
nothing, as ``timeit`` does; ``%%capture NAME`` binds ``NAME``), so that their reads and bindings count.

Magics that act on the kernel itself mean nothing in a remote process (``%load_ext``, ``%config``,
``%matplotlib``, ``%pip``, ``%azbatch...``): :func:`refused_magic` names the first one, with what to do,
before anything is submitted.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

__all__ = ["to_python", "for_analysis", "refused_magic", "uses_ipython"]

#: Magics that change or read this kernel (its extensions, config, history, debugger, packages): run
#: remotely they would act on a process that ends with the cell. Name -> what to do instead.
REFUSED = {
    "load_ext": "run it in a cell of its own, without %%azbatch",
    "reload_ext": "run it in a cell of its own, without %%azbatch",
    "unload_ext": "run it in a cell of its own, without %%azbatch",
    "config": "set it in a cell of its own, without %%azbatch",
    "matplotlib": "run it in a cell of its own: remote figures show inline anyway, with the notebook's settings",
    "pylab": "import what you need instead",
    "gui": "run it in a cell of its own, without %%azbatch",
    "autoreload": "run it in a cell of its own, without %%azbatch",
    "aimport": "run it in a cell of its own, without %%azbatch",
    "pip": "give --pip PKG on the %%azbatch line (the task's image gets it)",
    "conda": "give --pip PKG on the %%azbatch line (the task's image gets it)",
    "mamba": "give --pip PKG on the %%azbatch line (the task's image gets it)",
    "debug": "debug the cell here, without %%azbatch",
    "pdb": "debug the cell here, without %%azbatch",
    "history": "this kernel's history is not in the remote cell",
    "recall": "this kernel's history is not in the remote cell",
    "rerun": "this kernel's history is not in the remote cell",
    "macro": "this kernel's history is not in the remote cell",
    "edit": "edit here, without %%azbatch",
    "load": "load it here, then run the cell",
    "store": "use it in a cell of its own, without %%azbatch",
    "pinfo": "ask for help here, without %%azbatch",
    "pinfo2": "ask for help here, without %%azbatch",
    "psearch": "ask for help here, without %%azbatch",
    "reset": "reset this kernel in a cell of its own",
    "reset_selective": "reset this kernel in a cell of its own",
}

#: The function :func:`for_analysis` wraps timed code in: not a name of the cell's.
TIMEIT_SCOPE = "_azbatch_timeit"
_TIMEIT_OPTION = re.compile(r"\s*-(?:[nrp]\s*\S+|[tcqo])")
_IPYTHON_START = re.compile(r"^\s*(%|!|\?|>>>)|^.*=\s*[%!]|\?\s*$", re.MULTILINE)


def uses_ipython(source: str) -> bool:
    """Whether ``source`` is not plain Python as it stands (it has magics, shell escapes, help...)."""
    return bool(_IPYTHON_START.search(source)) and to_python(source).rstrip() != source.rstrip()


def to_python(source: str) -> str:
    """The cell as the kernel compiles it: IPython's input transformers applied. Plain Python comes
    back as it is (a cell without IPython syntax is not touched)."""
    if not _IPYTHON_START.search(source):
        return source
    try:
        from IPython.core.inputtransformer2 import TransformerManager
    except ImportError:  # no IPython where this runs: the cell is what it is
        return source
    return str(TransformerManager().transform_cell(source))


@dataclass(frozen=True)
class _Magic:
    kind: str  # "line" or "cell"
    name: str
    line: str
    body: str
    lineno: int


def _magic_of(node: ast.AST) -> _Magic | None:
    """``get_ipython().run_line_magic(NAME, LINE)`` / ``.run_cell_magic(NAME, LINE, BODY)``, literally."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return None
    owner, method = node.func.value, node.func.attr
    if not (isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "get_ipython"):
        return None
    args = [a.value if isinstance(a, ast.Constant) and isinstance(a.value, str) else None for a in node.args]
    if method == "run_line_magic" and len(args) == 2 and None not in args:
        return _Magic("line", str(args[0]), str(args[1]), "", node.lineno)
    if method == "run_cell_magic" and len(args) == 3 and None not in args:
        return _Magic("cell", str(args[0]), str(args[1]), str(args[2]), node.lineno)
    return None


def refused_magic(python: str) -> str | None:
    """One line naming the first magic of the transformed cell that cannot run remotely, or None."""
    try:
        tree = ast.parse(python)
    except SyntaxError:
        return None  # the analysis reports it
    for node in ast.walk(tree):
        magic = _magic_of(node)
        if magic is None:
            continue
        prefix = "%" if magic.kind == "line" else "%%"
        if magic.name.startswith("azbatch"):
            return (
                f"line {magic.lineno}: {prefix}{magic.name} cannot run inside a remote cell: "
                "run it in a cell of its own"
            )
        if magic.name in REFUSED:
            return (
                f"line {magic.lineno}: {prefix}{magic.name} acts on this kernel and means nothing in the remote "
                f"cell: {REFUSED[magic.name]}"
            )
    return None


def for_analysis(python: str) -> str:
    """The transformed cell with the code of ``%time``, ``%%time``, ``%timeit``, ``%%timeit`` and
    ``%%capture`` put back in place, for :func:`batchmagic.package.analysis.analyze` to see into.
    What cannot be read is left as the call it is."""
    tree = ast.parse(python)
    tree = _Inline().visit(tree)
    return ast.unparse(ast.fix_missing_locations(tree))


class _Inline(ast.NodeTransformer):
    def visit_Expr(self, node: ast.Expr) -> ast.AST | list[ast.stmt]:
        magic = _magic_of(node.value)
        if magic is None:
            return node
        return _statements(magic) or node

    def visit_Assign(self, node: ast.Assign) -> ast.AST | list[ast.stmt]:
        magic = _magic_of(node.value)
        if magic is None or magic.kind != "line":
            return node
        if magic.name == "timeit":  # res = %timeit -o STMT: reads what STMT reads, binds res
            reads = _reads_only(_strip_timeit_options(magic.line)) or []
            return [*reads, ast.Assign(targets=node.targets, value=ast.Constant(None), lineno=node.lineno)]
        if magic.name != "time":
            return node
        try:
            value = ast.parse(magic.line.strip(), mode="eval").body
        except SyntaxError:
            return node
        return ast.Assign(targets=node.targets, value=value, lineno=node.lineno)


def _parse(code: str) -> list[ast.stmt] | None:
    try:
        return ast.parse(for_analysis(to_python(code))).body
    except SyntaxError:
        return None


def _reads_only(code: str) -> list[ast.stmt] | None:
    """``def _(): CODE``: what the code reads counts, what it binds does not (timeit runs it apart)."""
    body = _parse(code)
    if not body:
        return None
    args = ast.arguments(posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[])
    return [ast.FunctionDef(name=TIMEIT_SCOPE, args=args, body=body, decorator_list=[], lineno=1)]


def _statements(magic: _Magic) -> list[ast.stmt] | None:
    if magic.kind == "line" and magic.name == "time":
        return _parse(magic.line)
    if magic.kind == "line" and magic.name == "timeit":
        return _reads_only(_strip_timeit_options(magic.line))
    if magic.kind == "cell" and magic.name == "time":
        return _parse(magic.body)
    if magic.kind == "cell" and magic.name == "timeit":
        setup = _strip_timeit_options(magic.line)
        return _reads_only(f"{setup}\n{magic.body}" if setup else magic.body)
    if magic.kind == "cell" and magic.name == "capture":
        body = _parse(magic.body) or []
        names = [w for w in magic.line.split() if not w.startswith("-")][:1]
        target: list[ast.stmt] = [ast.parse(f"{names[0]} = None").body[0]] if names and names[0].isidentifier() else []
        return [*body, *target] or None
    return None


def _strip_timeit_options(line: str) -> str:
    rest = line
    while True:
        match = _TIMEIT_OPTION.match(rest)
        if match is None:
            return rest.strip()
        rest = rest[match.end() :]
