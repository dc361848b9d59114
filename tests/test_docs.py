"""docs/LANGUAGE.md stays true: its examples parse (or fail as they say), and it mentions every
property, property alias, knob, solver kernel and rewrite choice the code knows.

Markers, on the first lines of a fenced ``toml`` block: ``# fragment`` (only part of a file: it
must be valid TOML, it is not parsed as a problem), ``# error: TEXT`` (parsing must raise a
SpecError whose message contains TEXT), ``# note: TEXT`` (the problem loads and one of its
notes contains TEXT; repeatable).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from autotune.errors import SpecError
from autotune.knobs import ALL_SOLVERS, KNOB_FAMILIES
from autotune.properties import ALIASES, MATRIX_PROPERTIES, SCALAR_PROPERTIES
from autotune.rules import REWRITE_CHOICES
from autotune.spec import INPUT_KEYS, TOP_LEVEL, parse_problem

DOC = Path(__file__).resolve().parent.parent / "docs" / "LANGUAGE.md"
TEXT = DOC.read_text()
_FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def _blocks(lang: str) -> list[tuple[int, str]]:
    """(line number, body) of every fenced block in the language ``lang``."""
    return [
        (TEXT.count("\n", 0, m.start()) + 1, m.group(2))
        for m in _FENCE.finditer(TEXT)
        if m.group(1) == lang
    ]


def _markers(body: str) -> list[tuple[str, str]]:
    """The leading ``# kind: text`` comment lines of a block."""
    out = []
    for line in body.splitlines():
        m = re.match(r"#\s*(fragment|error|note)\b:?\s*(.*)$", line.strip())
        if not m:
            break
        out.append((m.group(1), m.group(2).strip()))
    return out


TOML_BLOCKS = _blocks("toml")
YAML_BLOCKS = _blocks("yaml")


def test_the_doc_has_examples():
    assert len(TOML_BLOCKS) >= 20
    kinds = {k for _, body in TOML_BLOCKS for k, _ in _markers(body)}
    assert {"error", "note"} <= kinds


@pytest.mark.parametrize(("line", "body"), TOML_BLOCKS, ids=[f"L{n}" for n, _ in TOML_BLOCKS])
def test_toml_example(line: int, body: str) -> None:
    markers = _markers(body)
    kinds = {k for k, _ in markers}
    origin = f"{DOC.name}:{line}"
    if "fragment" in kinds:
        tomllib.loads(body)  # a fragment is still valid TOML
        return
    errors = [t for k, t in markers if k == "error"]
    if errors:
        with pytest.raises(SpecError) as info:
            parse_problem(body, origin=origin)
        for text in errors:
            assert text in str(info.value), f"{origin}: expected {text!r} in:\n{info.value}"
        return
    problem = parse_problem(body, origin=origin)
    notes = problem.notes
    for text in (t for k, t in markers if k == "note"):
        assert any(text in n for n in notes), f"{origin}: no note contains {text!r}: {notes}"


@pytest.mark.parametrize(("line", "body"), YAML_BLOCKS, ids=[f"L{n}" for n, _ in YAML_BLOCKS])
def test_yaml_example(line: int, body: str) -> None:
    parse_problem(body, origin=f"{DOC.name}:{line}.yaml")


def _mentioned(word: str) -> bool:
    return f"`{word}`" in TEXT or f"`{word}." in TEXT


@pytest.mark.parametrize("prop", MATRIX_PROPERTIES + SCALAR_PROPERTIES)
def test_every_property_is_documented(prop: str) -> None:
    assert _mentioned(prop), f"property {prop!r} is not in {DOC.name}"


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_every_property_alias_is_documented(alias: str) -> None:
    assert _mentioned(alias), f"property alias {alias!r} is not in {DOC.name}"


@pytest.mark.parametrize("family", list(KNOB_FAMILIES))
def test_every_knob_is_documented(family: str) -> None:
    assert _mentioned(family) or f"`{family}.<" in TEXT, f"knob {family!r} is not in {DOC.name}"


@pytest.mark.parametrize("solver", ALL_SOLVERS)
def test_every_solver_kernel_is_documented(solver: str) -> None:
    assert _mentioned(solver), f"solver kernel {solver!r} is not in {DOC.name}"


def test_the_solver_table_is_what_the_registry_offers() -> None:
    """Each row of the "kernels, best first" table is :func:`solver_choices` for a matrix whose
    primary property is that row's."""
    from autotune.kernels.registry import solver_choices

    start = TEXT.index("| the matrix is | kernels, best first |")
    rows = TEXT[start:].split("\n\n", 1)[0].splitlines()[2:]
    assert len(rows) >= 6
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        props = re.findall(r"`(\w+)`", cells[0].split(" or ")[0])
        facts = frozenset(props) | ({"symmetric"} if "positive_definite" in props else set())
        assert re.findall(r"`(\w+)`", cells[1]) == solver_choices(facts), row


def test_rewrite_choices_tables_and_fields_are_documented() -> None:
    for choice in REWRITE_CHOICES:
        if isinstance(choice, str):
            assert _mentioned(f'"{choice}"') or _mentioned(choice), choice
    for table in TOP_LEVEL:
        assert f"`[{table}]`" in TEXT, table
    for key in INPUT_KEYS:
        assert _mentioned(key), key
