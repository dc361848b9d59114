"""The house: no import cycle in the package, counting the imports made inside functions,
and no function longer than the limit (but the listed ones, which may only shrink)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "autotune"


def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every package module ``name`` imports, at module level or inside a function."""
    pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module
                                                                 else [])) \
                if node.level else (node.module or "")
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):
                found.add(t)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_the_package_has_no_import_cycle():
    mods = _modules()
    graph = {m: _imports(m, p, set(mods)) for m, p in mods.items()}
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


#: the longest a function of ``autotune/`` may be, in lines (``def`` to its last line)
MAX_FUNCTION_LINES = 80
#: the functions still longer, each at its length when this list was written: a function here
#: may shrink (then lower its number, or drop it once it fits) but never grow, and no other
#: function may pass the limit. (module, qualified name, lines). Empty: every function fits.
LONG_FUNCTIONS: dict[tuple[str, str], int] = {}


def _function_lengths(tree: ast.AST) -> dict[str, int]:
    """Qualified name (``Class.method``, ``outer.inner``) -> lines, nested functions too."""
    out: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = prefix + child.name
                out[name] = max(out.get(name, 0), child.end_lineno - child.lineno + 1)
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def _long_functions() -> dict[tuple[str, str], int]:
    return {
        (module, name): lines
        for module, path in _modules().items()
        for name, lines in _function_lengths(ast.parse(path.read_text())).items()
        if lines > MAX_FUNCTION_LINES
    }


def test_no_function_is_longer_than_the_limit_or_its_allowance():
    problems = []
    for (module, name), lines in sorted(_long_functions().items()):
        allowed = LONG_FUNCTIONS.get((module, name))
        if allowed is None:
            problems.append(f"{module}.{name}: {lines} lines, over {MAX_FUNCTION_LINES}: "
                            "break it into named functions")
        elif lines > allowed:
            problems.append(f"{module}.{name}: {lines} lines, grown from {allowed}: it may "
                            "only shrink")
    assert not problems, "\n".join(problems)


def test_the_allowlist_names_only_long_functions():
    """An entry whose function is gone or fits the limit is dropped, so the list only
    shrinks."""
    long = _long_functions()
    stale = [f"{module}.{name}" for module, name in LONG_FUNCTIONS if (module, name) not in long]
    assert not stale, "drop from LONG_FUNCTIONS (now within the limit or gone): " + ", ".join(
        stale)


def test_the_length_check_counts_methods_and_nested_functions():
    tree = ast.parse("class A:\n    def f(self):\n        def g():\n            pass\n"
                     "        return g\n\ndef h():\n    pass\n")
    assert _function_lengths(tree) == {"A.f": 4, "A.f.g": 2, "h": 2}


def test_no_package_name_is_both_a_module_and_something_else():
    """One name per thing: an attribute ``autotune`` exports (``autotune.derive``, the
    function) never hides a submodule of the same name (``import autotune.x as m`` would give
    the attribute, not the module)."""
    import importlib
    import types

    pkg = importlib.import_module("autotune")
    clashes = [
        name for name in (p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
        if not isinstance(getattr(pkg, name, types.ModuleType(name)), types.ModuleType)
    ]
    assert not clashes, f"autotune exports non-modules named like its submodules: {clashes}"
