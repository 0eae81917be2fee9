"""Property-based tests (hypothesis): capture over generated cells, sweep and flag parsing.

Whatever text arrives, nothing but our one-line errors escapes; and on generated cells the capture's
analysis agrees with running the cell on which names it reads before binding them and which it binds.
"""

from __future__ import annotations

import builtins
import shlex
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchmagic.config import parse_env, parse_timeout
from batchmagic.errors import CaptureError, ConfigError
from batchmagic.options import RunOptions
from batchmagic.package.capture import capture, check_cell
from batchmagic.package.inputs import parse_output
from batchmagic.run.sweep import parse_grid, rows_from

NAMES = ["a", "b", "c", "d"]
name = st.sampled_from(NAMES)


@st.composite
def expression(draw: Any) -> str:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return str(draw(st.integers(0, 9)))
    if kind == 1:
        return draw(name)
    if kind == 2:
        return f"{draw(name)} + {draw(st.integers(0, 9))}"
    return f"[{draw(name)} for _ in range(1)]"


@st.composite
def statement(draw: Any, depth: int = 0) -> list[str]:
    kinds = 6 if depth < 2 else 3
    kind = draw(st.integers(0, kinds - 1))
    if kind == 0:
        return [f"{draw(name)} = {draw(expression())}"]
    if kind == 1:
        return [f"{draw(name)} += 1"]
    if kind == 2:
        return [f"print({draw(expression())})"]
    body = draw(st.lists(statement(depth + 1), min_size=1, max_size=3))
    inner = ["    " + line for block in body for line in block]
    if kind == 3:
        return [f"for {draw(name)} in range({draw(st.integers(0, 2))}):", *inner]
    if kind == 4:
        other = draw(st.lists(statement(depth + 1), min_size=1, max_size=2))
        return [f"if {draw(name)}:", *inner, "else:", *["    " + line for block in other for line in block]]
    return ["try:", *inner, "except Exception:", "    pass"]


cells = st.lists(statement(), min_size=1, max_size=6).map(lambda blocks: "\n".join(x for b in blocks for x in b))


class Recording(MutableMapping[str, Any]):
    """A cell's top-level namespace that records each name read while it is not bound."""

    def __init__(self, initial: dict[str, Any]) -> None:
        self.data = dict(initial)
        self.bound: set[str] = set()
        self.read_unbound: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        if key not in self.bound:
            self.read_unbound.add(key)
        return self.data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.bound.add(key)
        self.data[key] = value

    def __delitem__(self, key: str) -> None:
        self.bound.discard(key)
        del self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cells)
def test_capture_agrees_with_running_the_cell(cell: str) -> None:
    analysis = check_cell(cell)
    namespace = Recording({n: 1 for n in NAMES})
    try:
        exec(compile(cell, "<cell>", "exec"), {"__builtins__": builtins}, namespace)  # noqa: S102
    except Exception:
        pass  # e.g. a name deleted earlier: what ran so far still counts
    read = namespace.read_unbound - set(dir(builtins))
    assert read <= set(analysis.inputs), (cell, analysis.inputs)
    assert namespace.bound <= set(analysis.bound), (cell, analysis.bound)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cells)
def test_capture_of_generated_cells_only_raises_capture_errors(tmp_path: Path, cell: str) -> None:
    try:
        captured = capture(cell, {n: i for i, n in enumerate(NAMES)}, tmp_path / "bundle", root=tmp_path)
    except CaptureError:
        return
    assert captured.size > 0
    assert set(captured.manifest.bound) == set(captured.analysis.bound)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200))
def test_any_text_as_a_cell_is_analyzed_or_one_capture_error(text: str) -> None:
    try:
        check_cell(text)
    except CaptureError as err:
        assert "\n" not in str(err)


token = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)


@settings(max_examples=500, deadline=None)
@given(st.lists(token, max_size=4))
def test_sweep_tokens_parse_or_one_config_error(tokens: list[str]) -> None:
    try:
        grid = parse_grid(tokens)
    except ConfigError as err:
        assert "\n" not in str(err)
        return
    for row in grid:
        assert all(key.isidentifier() for key in row)
    RunOptions(sweep=tuple(grid))  # a grid that parsed is a valid option


literal = st.one_of(
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.booleans(),
    st.none(),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(literal, min_size=1, max_size=5))
def test_sweep_values_round_trip_however_the_flag_is_quoted(values: list[Any]) -> None:
    """Python literals come back as themselves, in ``k=V``, ``'k=V'`` and ``k="V"`` alike (the line is
    split as a shell splits it, as the magic does)."""
    text = ",".join(repr(v) for v in values)
    lines = [f"k={shlex.quote(text)}", shlex.quote(f"k={text}")]
    if shlex.split(f"k={shlex.quote(text)}") == [f"k={text}"] and shlex.quote(text) == text:
        lines.append(f"k={text}")  # needs no quoting at all: k=1,2
    if shlex.quote(text).startswith("'") and '"' not in text and "\\" not in text and "$" not in text:
        lines.append(f'k="{text}"')  # double quotes, as users write them
    for line in lines:
        assert parse_grid(shlex.split(line)) == [{"k": v} for v in values], line


@settings(max_examples=200, deadline=None)
@given(st.integers(-99, 99), st.integers(-99, 99), st.sampled_from(["..", "...", ":", "-", " to "]))
def test_what_looks_like_a_range_names_the_range_form(start: int, stop: int, sep: str) -> None:
    with pytest.raises(ConfigError, match=r"range\(start, stop\)") as info:
        parse_grid([f"k={start}{sep}{stop}"])
    assert "\n" not in str(info.value)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(token, st.integers(), max_size=3), max_size=4))
def test_sweep_rows_parse_or_one_config_error(rows: list[dict[str, int]]) -> None:
    try:
        rows_from("rows", rows)
    except ConfigError as err:
        assert "\n" not in str(err)


@settings(max_examples=300, deadline=None)
@given(token, st.lists(token, max_size=3), token)
def test_flag_values_parse_or_one_config_error(timeout: str, env: list[str], output: str) -> None:
    for parse, value in ((parse_timeout, timeout), (parse_env, env), (parse_output, output)):
        try:
            parse(value)  # type: ignore[operator]
        except ConfigError as err:
            assert "\n" not in str(err)


@pytest.mark.parametrize("line", ["--sweep", "--sweep-from", "--out", "--out-run", "--env", "--name"])
def test_magic_flags_over_generated_text(shell, home, line):
    """Through the real magic: random values of each flag are one UsageError, nothing else. (The cell
    binds ``_azbatch``, itself refused after the flags: no value starts a run.)"""
    from IPython.core.error import UsageError

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.text(alphabet="ab=,1 '\"-_xclas", max_size=12))
    def check(value: str) -> None:
        with pytest.raises(UsageError) as info:
            shell.run_cell(f"%%azbatch {line} {value}\n_azbatch = 1")
        assert "\n" not in str(info.value)

    check()
    assert not (home / "runs").exists()
