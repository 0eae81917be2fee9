"""Static analysis of cells: what a cell reads from the notebook, and what it binds."""

from __future__ import annotations

import textwrap

import pytest

from batchmagic.package.analysis import StarImportError, analyze

# (cell, inputs in order of first use, bound in order)
CASES: dict[str, tuple[str, list[str], list[str]]] = {
    # --- plain statements ---
    "assign from input": ("y = x + 1", ["x"], ["y"]),
    "tuple unpacking with star": ("a, *b, (c, d) = seq", ["seq"], ["a", "b", "c", "d"]),
    "attribute and subscript targets read their object": ("obj.x = v\nd[k] = 1", ["v", "obj", "d", "k"], []),
    "chained assignment": ("a = b = f()", ["f"], ["a", "b"]),
    "augmented assignment reads the name": ("n += 1", ["n"], ["n"]),
    "augmented assignment after binding is not an input": ("n = 0\nn += step", ["step"], ["n"]),
    "augmented attribute reads the object only": ("obj.count += inc", ["inc", "obj"], []),
    "shadowing: assigned before use is not an input": ("df = load()\nm = df.mean()", ["load"], ["df", "m"]),
    "used before assigned in the cell is an input": ("m = df.mean()\ndf = 2", ["df"], ["m", "df"]),
    "self-referencing assignment": ("total = total + x", ["total", "x"], ["total"]),
    "annotated assignment evaluates the annotation": ("x: MyType = make()", ["make", "MyType"], ["x"]),
    "bare annotation binds nothing but reads the type": ("y: Other", ["Other"], []),
    "walrus at top level": ("if (n := size()) > 3:\n    pass\nprint(n)", ["size", "print"], ["n"]),
    # --- comprehensions ---
    "list comprehension": ("ys = [f(x) for x in xs if x > lo]", ["xs", "f", "lo"], ["ys"]),
    "set comprehension": ("s = {x % k for x in xs}", ["xs", "k"], ["s"]),
    "dict comprehension": ("d = {k: v * w for k, v in items}", ["items", "w"], ["d"]),
    "generator expression": ("t = sum(x * x for x in xs)", ["sum", "xs"], ["t"]),
    "nested comprehension": ("r = [[a * b for b in row] for row in m]", ["m", "a"], ["r"]),
    "two generators": ("p = [(i, j) for i in xs for j in range(i)]", ["xs", "range"], ["p"]),
    "first iterable is read outside": ("y = [x for x in x]", ["x"], ["y"]),
    "comprehension variable does not leak": ("ys = [x for x in xs]\nz = x", ["xs", "x"], ["ys", "z"]),
    "walrus in a comprehension binds outside": ("ys = [last := f(x) for x in xs]", ["xs", "f"], ["last", "ys"]),
    "walrus accumulator reads its own name": ("c = [acc := acc + x for x in xs]", ["xs", "acc"], ["acc", "c"]),
    # --- functions, closures, lambdas ---
    "function free names are inputs": ("def f(a):\n    return a * k + g(a)", ["g", "k"], ["f"]),
    "function reading a name bound before the def": ("k = 2\ndef f(a):\n    return a * k", [], ["k", "f"]),
    "recursive function": ("def fact(n):\n    return 1 if n < 2 else n * fact(n - 1)", [], ["fact"]),
    "function locals are not inputs": ("def f():\n    tmp = 1\n    return tmp", [], ["f"]),
    "closure: inner reads outer local": (
        "def outer():\n    k = 1\n    def inner():\n        return k + g\n    return inner",
        ["g"],
        ["outer"],
    ),
    "nonlocal in a closure": (
        "def counter():\n    n = 0\n    def inc():\n        nonlocal n\n        n += step\n"
        "        return n\n    return inc",
        ["step"],
        ["counter"],
    ),
    "global in a function is both input and bound": (
        "def reset():\n    global state\n    state = 0",
        ["state"],
        ["reset", "state"],
    ),
    "global read and written in a nested function": (
        "def f():\n    def g():\n        global hits\n        hits += 1\n    g()",
        ["hits"],
        ["f", "hits"],
    ),
    "lambda": ("sq = lambda v: v * scale", ["scale"], ["sq"]),
    "lambda default is read at once": ("f = lambda v, s=scale: v * s", ["scale"], ["f"]),
    "decorator and default arguments are read at def time": (
        "@memo(size)\ndef f(a, b=default, *, c=kw):\n    return a",
        ["memo", "size", "default", "kw"],
        ["f"],
    ),
    "argument and return annotations": ("def f(a: In1, *r: In2) -> Out:\n    return a", ["In1", "In2", "Out"], ["f"]),
    "async def": ("async def fetch(u):\n    return await get(u)", ["get"], ["fetch"]),
    "a function referring to one defined later in the cell": (
        "def f():\n    return helper()\ndef helper():\n    return 1",
        ["helper"],
        ["f", "helper"],
    ),
    # --- classes ---
    "class with bases, keywords and decorator": (
        "@register\nclass M(Base, metaclass=Meta):\n    pass",
        ["register", "Base", "Meta"],
        ["M"],
    ),
    "class body names are not inputs": ("class C:\n    a = 1\n    b = a + 1", [], ["C"]),
    "class body reading a global": ("class C:\n    rate = default_rate", ["default_rate"], ["C"]),
    "method reading a global": ("class C:\n    def f(self):\n        return np.mean(self.x)", ["np"], ["C"]),
    "method reading a global named like a method": (
        "class Model:\n    def train(self):\n        return train(self.data)",
        ["train"],
        ["Model"],
    ),
    "method cannot see class variables": ("class C:\n    lr = 1\n    def f(self):\n        return lr", ["lr"], ["C"]),
    "comprehension in a class body": (
        "class C:\n    n = 3\n    v = [i * n for i in range(n)]",
        ["n", "range"],
        ["C"],
    ),
    # --- imports ---
    "import as": ("import numpy as np", [], ["np"]),
    "dotted import binds the top package": ("import os.path\nimport a.b.c", [], ["os", "a"]),
    "from import as": ("from x import y as z, w", [], ["z", "w"]),
    "relative from import": ("from . import sibling", [], ["sibling"]),
    # --- del ---
    "del of an input": ("del big", ["big"], []),
    "del after assignment": ("tmp = 1\ndel tmp", [], ["tmp"]),
    "del of an attribute or item reads the object": ("del obj.attr, d[key]", ["obj", "d", "key"], []),
    # --- control flow ---
    "if/else: bound on both branches is definite": (
        "if c:\n    v = 1\nelse:\n    v = 2\nprint(v)",
        ["c", "print"],
        ["v"],
    ),
    "if without else: not definite": ("if c:\n    v = 1\nprint(v)", ["c", "print", "v"], ["v"]),
    "if/elif/else: only names bound on every path": (
        "if a:\n    v = w = 1\nelif b:\n    v = 2\nelse:\n    v = w = 3\nuse(v, w)",
        ["a", "b", "use", "w"],
        ["v", "w"],
    ),
    "for: the body may not run": (
        "for i in items:\n    last = i\nprint(last, i)",
        ["items", "print", "last", "i"],
        ["i", "last"],
    ),
    "for: body reads its target": ("for i in range(n):\n    acc.append(i)", ["range", "n", "acc"], ["i"]),
    "for/else": (
        "for i in xs:\n    break\nelse:\n    found = 0\nprint(found)",
        ["xs", "print", "found"],
        ["i", "found"],
    ),
    "while: the body may not run": (
        "while cond():\n    x = step()\nprint(x)",
        ["cond", "step", "print", "x"],
        ["x"],
    ),
    "try/except: handler name is not definite afterwards": (
        "try:\n    r = f()\nexcept ValueError as err:\n    r = None\n    log(err)\nprint(r)",
        ["f", "ValueError", "log", "print"],
        ["r", "err"],
    ),
    "try without a binding handler: not definite": (
        "try:\n    r = f()\nexcept Exception:\n    pass\nuse(r)",
        ["f", "Exception", "use", "r"],
        ["r"],
    ),
    "try/finally: finally always runs": (
        "try:\n    a = f()\nfinally:\n    done = 1\nuse(a, done)",
        ["f", "use"],
        ["a", "done"],
    ),
    "try/else": (
        "try:\n    a = f()\nexcept E:\n    a = 0\nelse:\n    b = a\nuse(a, b)",
        ["f", "E", "use", "b"],
        ["a", "b"],
    ),
    "with as": ("with open(path) as fh:\n    data = fh.read()\nuse(data)", ["open", "path", "use"], ["fh", "data"]),
    "with tuple target": ("with ctx() as (a, b):\n    c = a + b", ["ctx"], ["a", "b", "c"]),
    "match statement": (
        "match cmd:\n"
        "    case Point(x=0, y=yy):\n"
        "        out = yy\n"
        "    case [first, *rest]:\n"
        "        out = first\n"
        "    case {Keys.A: val, **others}:\n"
        "        out = val\n"
        "    case Color.RED | None:\n"
        "        out = 0\n"
        "    case n if n > limit:\n"
        "        out = n\n"
        "print(out)",
        ["cmd", "Point", "Keys", "Color", "limit", "print", "out"],
        ["yy", "out", "first", "rest", "others", "val", "n"],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_cell_shapes(name: str) -> None:
    source, inputs, bound = CASES[name]
    result = analyze(source)
    assert result.inputs == inputs
    assert result.bound == bound


def test_del_reports_deleted_names() -> None:
    result = analyze("x = 1\ndel x, y\ndel z")
    assert result.deleted == {"x", "y", "z"}
    assert result.inputs == ["y", "z"]


def test_rebinding_after_del_is_not_deleted() -> None:
    result = analyze("del a\na = 2")
    assert result.deleted == set()
    assert result.bound == ["a"]


def test_name_read_after_del_is_an_input() -> None:
    # After `del x` the cell reads whatever x the notebook had... or fails: either way it is needed.
    assert analyze("x = 1\ndel x\nprint(x)").inputs == ["print", "x"]


def test_imported_modules_are_top_level_absolute_names() -> None:
    cell = "import numpy as np\nimport os.path\nfrom sklearn.linear_model import Ridge\nfrom . import rel\nimport json"
    assert analyze(cell).imported_modules == ["numpy", "os", "sklearn", "json"]


def test_star_import_is_refused() -> None:
    with pytest.raises(StarImportError) as info:
        analyze("x = 1\nfrom math import *")
    assert info.value.module == "math"
    assert info.value.lineno == 2


def test_star_import_inside_a_branch_is_refused() -> None:
    with pytest.raises(StarImportError):
        analyze("if flag:\n    from os.path import *")


def test_syntax_error_raises_with_the_line() -> None:
    with pytest.raises(SyntaxError) as info:
        analyze("x = 1\ny = (\n")
    assert info.value.lineno == 2


def test_bare_global_at_top_level_changes_nothing() -> None:
    result = analyze("global g\ng = 1")
    assert result.inputs == []
    assert result.bound == ["g"]


def test_realistic_training_cell() -> None:
    cell = textwrap.dedent(
        """
        import json
        from sklearn.linear_model import Ridge as R
        model = R(alpha=alpha).fit(df[features], df.y)
        scores = {name: model.score(X, y) for name, (X, y) in splits.items()}
        print(json.dumps(scores))
        del df
        """
    )
    result = analyze(cell)
    assert result.inputs == ["alpha", "df", "features", "splits", "print"]
    assert result.bound == ["json", "R", "model", "scores"]
    assert result.deleted == {"df"}
