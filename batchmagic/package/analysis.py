"""Static analysis of a cell: which names it reads from outside, which it binds.

Pure ``ast`` work with no namespace and no side effects, so it is easy to test over many cell
shapes. :func:`analyze` walks the cell's top-level statements in evaluation order, keeping the
set of names that are *definitely* bound at each point:

- a name loaded before it is definitely bound is an input (it must come from the notebook);
- function and lambda bodies run later, so their free names are inputs unless the cell bound
  them before the ``def``; comprehensions and class bodies run at once;
- branches (``if``, loops, ``try``, ``match``) only keep what every path binds.

Bindings are the names the cell assigns, imports, defines or deletes at top level, plus names a
function in the cell declares ``global`` and assigns.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

__all__ = ["CellAnalysis", "StarImportError", "analyze"]


class StarImportError(ValueError):
    """The cell contains ``from module import *``, whose names cannot be known statically."""

    def __init__(self, module: str, lineno: int) -> None:
        super().__init__(module, lineno)
        self.module = module
        self.lineno = lineno


@dataclass
class CellAnalysis:
    """What a cell reads and binds at top level.

    Attributes
    ----------
    inputs : list of str
        Names read before the cell binds them, in order of first use.
    bound : list of str
        Names bound at top level (assigned, imported, defined, loop targets...), in order.
    deleted : set of str
        Names the cell deletes at top level with ``del``.
    imported_modules : list of str
        Top-level module names of the cell's ``import`` statements (absolute imports only).
    ipython : bool
        The cell uses IPython syntax (magics, ``!cmd``): it was analyzed as IPython transforms it
        (set by :func:`batchmagic.package.capture.check_cell`).
    """

    inputs: list[str] = field(default_factory=list)
    bound: list[str] = field(default_factory=list)
    deleted: set[str] = field(default_factory=set)
    imported_modules: list[str] = field(default_factory=list)
    ipython: bool = False


def analyze(source: str, *, filename: str = "<cell>") -> CellAnalysis:
    """Analyze a cell's source.

    Raises
    ------
    SyntaxError
        If the cell does not parse.
    StarImportError
        If the cell contains a star import.
    """
    tree = ast.parse(source, filename=filename)
    walker = _TopLevel()
    walker.block(tree.body)
    result = CellAnalysis()
    result.inputs = list(dict.fromkeys(walker.inputs))
    result.bound = list(dict.fromkeys(walker.all_bound))
    result.deleted = walker.deleted
    result.imported_modules = list(dict.fromkeys(walker.imported_modules))
    return result


# --- scopes that run later or apart: free names of a function, lambda, class or comprehension ---


def _target_names(node: ast.AST) -> set[str]:
    """Names bound by an assignment target (Name, Tuple, List, Starred, nested)."""
    if isinstance(node, ast.Name):
        return {node.id}
    if isinstance(node, ast.Starred):
        return _target_names(node.value)
    if isinstance(node, ast.Tuple | ast.List):
        out: set[str] = set()
        for elt in node.elts:
            out |= _target_names(elt)
        return out
    return set()  # attribute or subscript targets bind nothing


def _pattern_names(pattern: ast.AST) -> set[str]:
    names: set[str] = set()
    for sub in ast.walk(pattern):
        if isinstance(sub, ast.MatchAs | ast.MatchStar) and sub.name:
            names.add(sub.name)
        elif isinstance(sub, ast.MatchMapping) and sub.rest:
            names.add(sub.rest)
    return names


def _arg_names(args: ast.arguments) -> set[str]:
    all_args = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    if args.vararg:
        all_args.append(args.vararg)
    if args.kwarg:
        all_args.append(args.kwarg)
    return {a.arg for a in all_args}


def _arg_expressions(args: ast.arguments) -> list[ast.expr]:
    """Defaults and annotations: evaluated when the ``def`` runs, in the enclosing scope."""
    exprs: list[ast.expr] = [*args.defaults, *(d for d in args.kw_defaults if d is not None)]
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
    exprs += [a.annotation for a in every if a is not None and a.annotation is not None]
    return exprs


class _ScopeNames(ast.NodeVisitor):
    """Collect loads, local bindings and global declarations of one scope's body.

    Nested scopes are reduced to their own free names, kept apart in ``nested``: a function
    resolves them against its locals like its own loads, but a class body does not (a method
    or comprehension in a class cannot see the class's names).
    """

    def __init__(self) -> None:
        self.loads: set[str] = set()
        self.nested: set[str] = set()
        self.binds: set[str] = set()
        self.globals: set[str] = set()
        self.nonlocals: set[str] = set()
        self.global_stores: set[str] = set()

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.loads.add(node.id)
        else:
            self.binds.add(node.id)
            if isinstance(node.ctx, ast.Del):
                self.loads.add(node.id)

    def visit_Global(self, node: ast.Global) -> None:
        self.globals.update(node.names)

    def visit_Nonlocal(self, node: ast.Nonlocal) -> None:
        self.nonlocals.update(node.names)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.loads |= _target_names(node.target)
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.binds.add(alias.asname or alias.name.split(".")[0])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name != "*":
                self.binds.add(alias.asname or alias.name)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self.binds.add(node.name)
        self.generic_visit(node)

    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        self.binds |= _pattern_names(node)
        self.generic_visit(node)

    def visit_MatchStar(self, node: ast.MatchStar) -> None:
        self.binds |= _pattern_names(node)

    def visit_MatchMapping(self, node: ast.MatchMapping) -> None:
        if node.rest:
            self.binds.add(node.rest)
        self.generic_visit(node)

    def _nested(self, free: set[str], global_stores: set[str]) -> None:
        self.nested |= free
        self.global_stores |= global_stores

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.binds.add(node.name)
        for expr in [*node.decorator_list, *_arg_expressions(node.args)]:
            self.visit(expr)
        if node.returns is not None:
            self.visit(node.returns)
        self._nested(*_function_free(node.args, node.body))

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> None:
        for expr in _arg_expressions(node.args):
            self.visit(expr)
        self._nested(*_function_free(node.args, [node.body]))

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.binds.add(node.name)
        for expr in [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]:
            self.visit(expr)
        self._nested(*_class_free(node))

    def _comprehension(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp) -> None:
        first_iter, free, walrus = _comprehension_free(node)
        self.loads |= first_iter
        self.nested |= free
        self.binds |= walrus

    visit_ListComp = _comprehension
    visit_SetComp = _comprehension
    visit_GeneratorExp = _comprehension
    visit_DictComp = _comprehension


def _function_free(args: ast.arguments, body: list[ast.stmt] | list[ast.expr]) -> tuple[set[str], set[str]]:
    """Free names of a function body and the globals it assigns."""
    scope = _ScopeNames()
    for stmt in body:
        scope.visit(stmt)
    local = (scope.binds | _arg_names(args)) - scope.globals - scope.nonlocals
    free = (scope.loads | scope.nested) - local
    global_stores = (scope.binds & scope.globals) | scope.global_stores
    return free | (scope.globals & scope.binds), global_stores


def _class_free(node: ast.ClassDef) -> tuple[set[str], set[str]]:
    scope = _ScopeNames()
    for stmt in node.body:
        scope.visit(stmt)
    # A class body's loads resolve to its own bindings only if bound before use; treating every
    # load not bound in the body as free is the safe (over-shipping) answer.
    free = (scope.loads - (scope.binds - scope.globals)) | scope.nested
    return free, (scope.binds & scope.globals) | scope.global_stores


def _comprehension_free(
    node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp,
) -> tuple[set[str], set[str], set[str]]:
    """Names read by the first iterable, free names of the rest, and names bound by walrus.

    The first iterable is evaluated in the enclosing scope, before any target is bound, so
    ``[x for x in x]`` reads the outer ``x``.
    """
    outer = _ScopeNames()
    outer.visit(node.generators[0].iter)
    scope = _ScopeNames()
    targets: set[str] = set()
    for i, gen in enumerate(node.generators):
        if i:
            scope.visit(gen.iter)
        targets |= _target_names(gen.target)
        for cond in gen.ifs:
            scope.visit(cond)
    if isinstance(node, ast.DictComp):
        scope.visit(node.key)
        scope.visit(node.value)
    else:
        scope.visit(node.elt)
    walrus = {n.target.id for n in ast.walk(node) if isinstance(n, ast.NamedExpr)}
    free = (scope.loads | scope.nested) - targets - (scope.binds - walrus)
    return outer.loads | outer.nested, free, walrus


# --- the top level, in evaluation order ---


class _TopLevel(ast.NodeVisitor):
    def __init__(self) -> None:
        self.bound: set[str] = set()  # definitely bound at this point
        self.inputs: list[str] = []
        self.all_bound: list[str] = []
        self.deleted: set[str] = set()
        self.imported_modules: list[str] = []

    # bookkeeping
    def load(self, names: set[str] | list[str]) -> None:
        for name in sorted(names) if isinstance(names, set) else names:
            if name not in self.bound:
                self.inputs.append(name)

    def bind(self, names: set[str] | list[str]) -> None:
        for name in sorted(names) if isinstance(names, set) else names:
            self.bound.add(name)
            self.all_bound.append(name)
            self.deleted.discard(name)

    def block(self, body: list[ast.stmt]) -> None:
        for stmt in body:
            self.visit(stmt)

    def branch(self, *bodies: list[ast.stmt]) -> set[str]:
        """Run each body from the current state; return what every one of them binds."""
        before = set(self.bound)
        results = []
        for body in bodies:
            self.bound = set(before)
            self.block(body)
            results.append(self.bound)
        self.bound = before
        return set.intersection(*results) if results else set()

    # expressions
    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.load([node.id])

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self.bind([node.target.id])

    def visit_Lambda(self, node: ast.Lambda) -> None:
        for expr in _arg_expressions(node.args):
            self.visit(expr)
        free, global_stores = _function_free(node.args, [node.body])
        self.load(free)
        self.all_bound.extend(sorted(global_stores))

    def _comprehension(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp) -> None:
        first_iter, free, walrus = _comprehension_free(node)
        self.load(first_iter)
        self.load(free)
        self.bind(walrus)

    visit_ListComp = _comprehension
    visit_SetComp = _comprehension
    visit_GeneratorExp = _comprehension
    visit_DictComp = _comprehension

    # statements that bind
    def store(self, target: ast.expr) -> None:
        """Bind a target after its value was evaluated; attribute/subscript targets load."""
        if isinstance(target, ast.Name):
            self.bind([target.id])
        elif isinstance(target, ast.Starred):
            self.store(target.value)
        elif isinstance(target, ast.Tuple | ast.List):
            for elt in target.elts:
                self.store(elt)
        else:
            self.visit(target)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self.store(target)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
            self.store(node.target)
        elif not isinstance(node.target, ast.Name):
            self.visit(node.target)
        self.visit(node.annotation)  # evaluated at top level (and stored in __annotations__)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.visit(node.value)
        self.visit(node.target.value if not isinstance(node.target, ast.Name) else node.target)
        if isinstance(node.target, ast.Name):
            self.load([node.target.id])
            self.bind([node.target.id])
        else:
            self.visit(node.target)

    def visit_Delete(self, node: ast.Delete) -> None:
        for target in node.targets:
            for name in sorted(_target_names(target)):
                self.load([name])  # `del x` needs x to exist
                self.bound.discard(name)
                self.deleted.add(name)
            if not isinstance(target, ast.Name | ast.Tuple | ast.List):
                self.visit(target)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            top = alias.name.split(".")[0]
            self.imported_modules.append(top)
            self.bind([alias.asname or top])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self.imported_modules.append(node.module.split(".")[0])
        for alias in node.names:
            if alias.name == "*":
                raise StarImportError(node.module or ".", node.lineno)
            self.bind([alias.asname or alias.name])

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for expr in [*node.decorator_list, *_arg_expressions(node.args)]:
            self.visit(expr)
        if node.returns is not None:
            self.visit(node.returns)
        free, global_stores = _function_free(node.args, node.body)
        self.load(free - {node.name})
        self.bind([node.name])
        self.all_bound.extend(sorted(global_stores))

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for expr in [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]:
            self.visit(expr)
        free, global_stores = _class_free(node)
        self.load(free)
        self.bind([node.name])
        self.all_bound.extend(sorted(global_stores))

    # control flow
    def visit_If(self, node: ast.If) -> None:
        self.visit(node.test)
        self.bound |= self.branch(node.body, node.orelse)

    def _loop_body(self, body: list[ast.stmt], orelse: list[ast.stmt]) -> None:
        # The body may run zero times: nothing it binds is definite afterwards.
        self.branch(body)
        self.branch(orelse)

    def visit_For(self, node: ast.For | ast.AsyncFor) -> None:
        self.visit(node.iter)
        before = set(self.bound)
        self.store(node.target)
        self.block(node.body)
        self.bound = before
        self.branch(node.orelse)

    visit_AsyncFor = visit_For

    def visit_While(self, node: ast.While) -> None:
        self.visit(node.test)
        self._loop_body(node.body, node.orelse)

    def visit_With(self, node: ast.With | ast.AsyncWith) -> None:
        for item in node.items:
            self.visit(item.context_expr)
            if item.optional_vars is not None:
                self.store(item.optional_vars)
        self.block(node.body)

    visit_AsyncWith = visit_With

    def visit_Try(self, node: ast.Try | ast.TryStar) -> None:
        before = set(self.bound)
        self.block(node.body)
        self.block(node.orelse)
        after_body = self.bound
        handled = [after_body]
        for handler in node.handlers:
            self.bound = set(before)
            if handler.type is not None:
                self.visit(handler.type)
            if handler.name:
                self.bind([handler.name])
            self.block(handler.body)
            if handler.name:
                self.bound.discard(handler.name)  # Python deletes it after the handler
            handled.append(self.bound)
        self.bound = set(before)
        self.block(node.finalbody)
        self.bound |= set.intersection(*handled)

    visit_TryStar = visit_Try

    def visit_Match(self, node: ast.Match) -> None:
        self.visit(node.subject)
        before = set(self.bound)
        for case in node.cases:
            self.bound = set(before)
            for sub in ast.walk(case.pattern):
                if isinstance(sub, ast.MatchValue | ast.MatchClass):
                    self.visit(sub.value if isinstance(sub, ast.MatchValue) else sub.cls)
                elif isinstance(sub, ast.MatchMapping):
                    for key in sub.keys:
                        self.visit(key)
            self.bind(_pattern_names(case.pattern))
            if case.guard is not None:
                self.visit(case.guard)
            self.block(case.body)
        # No case may match: only what the subject and patterns bound before stays definite.
        self.bound = before

    def visit_Global(self, node: ast.Global) -> None:
        """At top level ``global`` changes nothing."""

    def visit_Nonlocal(self, node: ast.Nonlocal) -> None:
        """Not valid at top level; the parser already rejects it."""
