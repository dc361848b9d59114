"""Problems: the declarative files of ``search_spaces/`` (TOML or YAML) and the Python API.

A problem file has these tables::

    [problem]      name, description, dtype
    [dims]         n = 4000 (a free dimension and its default) or k = "n // 2" (derived)
    [inputs]       X = { shape = ["n", "n"], properties = ["positive_definite"] }
    [definitions]  S = "R + H*Sigma*H.T"            (named intermediate results)
    [outputs]      x = "mu + Sigma*H.T*inv(S)*(H*mu - data)"
    [search]       the knobs that apply and their ranges (see autotune.space)

Dimensions: a dimension defined as exactly another one (``m = "n"``) is an *alias*: the same
dimension (one symbol, so ``A + B`` with A n x m and B n x n conforms), not a dimension of its
own: it is listed in :attr:`Problem.aliases`, not in :attr:`Problem.dims`, has no knobs
(``blocks.n`` blocks both) and cannot be set (``--dim m=...`` is an error that says to set n).

Inputs: ``bandwidth = [lower, upper]`` declares a band (the numbers of sub- and superdiagonals
that may be nonzero; diagonal = [0, 0], tridiagonal = [1, 1]); it is checked against the
shape at the default sizes and against the declared properties.

Outputs may use other outputs by name (``S2 = "S + C"``), as they use definitions.

What the formulas imply is added to the declared properties: a matrix the formula inverts is
invertible, and an invertible semidefinite one positive definite (:attr:`Problem.notes` says
so, one sentence each; :func:`autotune.inverses.assume_invertible`).

Every mistake raises :class:`SpecError` naming the file, the field and the valid choices.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import sympy as sp
import yaml
from sympy.matrices.expressions import MatrixExpr, MatrixSymbol

from .errors import SpecError
from .formula import (
    FUNCTIONS,
    MAX_NODES,
    formula_names,
    nodes,
    parse_dim_formula,
    parse_formula,
    tree_size,
)
from .properties import (
    Band,
    FactBase,
    Facts,
    band_properties,
    close_facts,
    validate_bandwidth,
    validate_properties,
)

__all__ = ["Problem", "InputSpec", "load_problem", "parse_problem", "problem_names"]

TOP_LEVEL = ("problem", "dims", "inputs", "definitions", "outputs", "search")
INPUT_KEYS = ("shape", "properties", "bandwidth", "description")
DTYPES = ("float64", "float32")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z_0-9]*\Z")
RESERVED = set(FUNCTIONS) | {"T"}  # T: the transpose suffix (X.T)
#: a problem name becomes part of file names (plans, studies): a safe file-name component
_PROBLEM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z", re.ASCII)
MAX_NAME = 100
MAX_CHAIN = 50  # definitions (or derived dims) referring to each other, deepest chain
#: parsed formulas by :meth:`Problem._formula_key` (insertion-ordered, the oldest dropped)
_PARSED: dict[tuple, dict[str, sp.Basic]] = {}


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[str | int, ...]  # () scalar, (r, c) matrix; dims by name or integer
    properties: tuple[str, ...]  # canonical, as declared (not closed)
    description: str = ""
    bandwidth: Band | None = None  # (lower, upper) as declared, or None

    @property
    def is_scalar(self) -> bool:
        return len(self.shape) == 0


@dataclass(frozen=True, eq=False)
class Problem:
    """A validated problem. Build with :func:`parse_problem`, :func:`load_problem` or
    :meth:`Problem.from_sympy`."""

    name: str
    description: str
    dims: dict[str, int | str]  # free dims: default int; derived: formula text
    inputs: dict[str, InputSpec]
    definitions: dict[str, str]
    outputs: dict[str, str]
    search: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float64"
    source: str = ""  # the spec text as written (stored in plans)
    origin: str = "<python>"  # file path or '<python>'
    #: dimension aliases: a name defined as exactly another dimension -> that dimension
    aliases: dict[str, str] = field(default_factory=dict)
    #: outputs returned as one triangle (``store = "lower"``): name -> ``"lower"``. The other
    #: triangle's contents are unspecified, as in LAPACK's symmetric storage.
    stored: dict[str, str] = field(default_factory=dict)

    # -- identity ----------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        return isinstance(other, Problem) and (self.source, self.origin) == (
            other.source,
            other.origin,
        )

    def __hash__(self) -> int:
        return hash((self.source, self.origin))

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()

    # -- dimensions --------------------------------------------------------------------
    @cached_property
    def dim_symbols(self) -> dict[str, sp.Symbol]:
        return {d: sp.Symbol(d, integer=True, positive=True) for d in self.dims}

    @cached_property
    def dim_names(self) -> dict[str, sp.Symbol]:
        """Every name a formula or shape may use for a dimension: the dimensions and their
        aliases (an alias is its dimension's symbol)."""
        out = dict(self.dim_symbols)
        for alias, target in self.aliases.items():
            out[alias] = self.dim_symbols[target]
        return out

    @property
    def free_dims(self) -> list[str]:
        return [d for d, v in self.dims.items() if isinstance(v, int)]

    def resolve_dims(self, overrides: Mapping[str, int] | None = None) -> dict[str, int]:
        """Concrete values of every dimension, from defaults, formulas and ``overrides``."""
        overrides = dict(overrides or {})
        for name, value in overrides.items():
            if name in self.aliases:
                raise SpecError(
                    f"{self.origin}: dimension {name} is another name for {self.aliases[name]} "
                    f"(an alias in [dims]: the same dimension); set {self.aliases[name]} "
                    "instead"
                )
            if name not in self.dims:
                raise SpecError(
                    f"{self.origin}: unknown dimension {name!r}; dimensions: "
                    f"{', '.join(self.dims)}"
                )
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpecError(
                    f"{self.origin}: dimension {name} must be a positive integer, got {value!r}"
                )
        out: dict[str, int] = {}
        visiting: list[str] = []

        def value_of(name: str) -> int:
            if name in out:
                return out[name]
            if name in overrides:
                out[name] = overrides[name]
                return out[name]
            spec = self.dims[name]
            if isinstance(spec, int):
                out[name] = spec
                return spec
            if name in visiting:
                cycle = " -> ".join(visiting[visiting.index(name) :] + [name])
                named = "; ".join(f"{a} is another name for {t}"
                                  for a, t in sorted(self.aliases.items()))
                raise SpecError(f"{self.origin}: dims: cyclic definition {cycle}"
                                + (f" ({named})" if named else ""))
            if len(visiting) >= MAX_CHAIN:
                raise SpecError(
                    f"{self.origin}: dims.{name}: derived dimensions refer to each other more "
                    f"than {MAX_CHAIN} deep ({visiting[0]} -> {visiting[1]} -> ...)"
                )
            visiting.append(name)
            fn = parse_dim_formula(spec, f"{self.origin}: dims.{name}")
            env = {
                d: value_of(self.aliases.get(d, d))
                for d in fn.names  # type: ignore[attr-defined]
                if d in self.dims or d in self.aliases
            }
            visiting.pop()
            v = fn(env)
            if v < 1:
                raise SpecError(
                    f"{self.origin}: dims.{name} = {spec!r} gives {v}; a dimension must be a "
                    f"positive integer (with {', '.join(f'{k}={x}' for k, x in env.items())})"
                )
            out[name] = v
            return v

        for name in self.dims:
            value_of(name)
        return out

    # -- symbols -----------------------------------------------------------------------
    def _size(self, s: str | int) -> sp.Basic:
        return sp.Integer(s) if isinstance(s, int) else self.dim_names[s]

    @cached_property
    def symbols(self) -> dict[str, sp.Basic]:
        """Input name -> ``MatrixSymbol`` (or a scalar ``Symbol``)."""
        out: dict[str, sp.Basic] = {}
        for name, spec in self.inputs.items():
            if spec.is_scalar:
                out[name] = sp.Symbol(name, real=True)
            else:
                out[name] = MatrixSymbol(name, self._size(spec.shape[0]), self._size(spec.shape[1]))
        return out

    def facts(self, dims: Mapping[str, int] | None = None) -> FactBase:
        """A fact base with the declared properties and bands, and what the formulas imply
        (an inverted matrix is invertible: :attr:`notes`); ``dims`` (concrete) lets inference
        tell wide from tall matrices."""
        return self._facts_and_inference(dims)[0]

    def _facts_and_inference(self, dims: Mapping[str, int] | None = None) -> tuple[FactBase, Any]:
        from .inverses import assume_invertible

        fb = FactBase()
        values = self.resolve_dims(dims)
        fb.dims = {self.dim_symbols[d]: v for d, v in values.items()}
        for name, spec in self.inputs.items():
            fb.declare(self.symbols[name], spec.properties, spec.bandwidth)
        exprs = self.expressions
        names = _Names([(nm, exprs[nm]) for nm in (*self.definitions, *self.outputs)], fb)
        inference = assume_invertible([exprs[o] for o in self.outputs], fb, names)
        return fb, inference

    @cached_property
    def inference(self) -> Any:
        """What the formulas imply at the default sizes (an
        :class:`autotune.inverses.Inference`: notes, inputs' gained facts, inputs drawn at
        full rank)."""
        return self._facts_and_inference()[1]

    @property
    def notes(self) -> list[str]:
        """The reasoning behind inferred properties, one sentence each ("C is inverted, so it
        is taken as positive definite ..."); printed when a run loads the problem."""
        return list(self.inference.notes)

    @property
    def full_rank_inputs(self) -> set[str]:
        """Semidefinite inputs that appear inside an inverted matrix: random instances draw
        them at full rank."""
        return {a.name for a in self.inference.full_rank}

    def declared(self, name: str) -> Facts:
        """The input's properties, closed: as declared, with those its band implies and those
        the formulas imply (an input the formula inverts is invertible; see :attr:`notes`)."""
        sym = self.symbols[name]
        spec = self.inputs[name]
        shape = None if spec.is_scalar else sym.shape
        facts = validate_properties(spec.properties, shape, name)
        if spec.bandwidth is not None and shape is not None:
            facts = close_facts(
                facts | band_properties(spec.bandwidth, shape[0] == shape[1]),
                shape[0] == shape[1],
            )
        gained = self.inference.atoms.get(sym)
        if gained is not None:
            facts = facts | gained
        return facts

    def bandwidth(self, name: str, dims: Mapping[str, int] | None = None) -> Band | None:
        """The band of an input at these sizes (its declared ``bandwidth`` and what its
        properties promise; :meth:`autotune.properties.FactBase.bandwidth`)."""
        return self.facts(dims).bandwidth(self.symbols[name])

    @cached_property
    def expressions(self) -> dict[str, sp.Basic]:
        """Definitions and outputs as SymPy expressions over the inputs (definitions
        inlined). Parsed once per distinct set of formulas, however many copies of the problem
        are made (``dataclasses.replace`` for another [search] table re-uses the parse)."""
        key = self._formula_key()
        hit = _PARSED.get(key)
        if hit is None:
            hit = _parse_formulas(self)
            _PARSED[key] = hit
            while len(_PARSED) > 64:
                _PARSED.pop(next(iter(_PARSED)))
        return dict(hit)

    def _formula_key(self) -> tuple:
        """What the parsed formulas depend on: dims, input names and shapes, the formulas."""
        return (
            tuple(self.dims),
            tuple(self.aliases.items()),
            tuple((n, s.shape) for n, s in self.inputs.items()),
            tuple(self.definitions.items()),
            tuple(self.outputs.items()),
        )

    @property
    def output_exprs(self) -> dict[str, sp.Basic]:
        return {name: self.expressions[name] for name in self.outputs}

    def shape_of(self, name: str, dims: Mapping[str, int]) -> tuple[int, ...]:
        """Concrete shape of an input or output."""
        e = self.symbols.get(name)
        if e is None:
            e = self.expressions[name]
        if not isinstance(e, MatrixExpr):
            return ()
        subs = {self.dim_symbols[d]: v for d, v in dims.items()}
        return tuple(int(d) if isinstance(d, int) else int(d.subs(subs)) for d in e.shape)  # type: ignore[return-value]

    # -- Python API ----------------------------------------------------------------------
    @classmethod
    def from_sympy(
        cls,
        outputs: Mapping[str, sp.Basic],
        properties: Mapping[sp.Basic, list[str]] | None = None,
        dims: Mapping[sp.Symbol | str, int | str] | None = None,
        name: str = "problem",
        description: str = "",
        search: Mapping[str, Any] | None = None,
        dtype: str = "float64",
        stored: Mapping[str, str] | None = None,
    ) -> Problem:
        """Build a problem from SymPy matrix expressions.

        ``outputs`` maps names to expressions over ``MatrixSymbol`` inputs whose shapes are
        dimension symbols or integers; ``properties`` maps input symbols to property names;
        ``dims`` gives each dimension symbol its default value (or a formula string). The
        problem is serialized to the file format so that plans can store and re-derive it.
        ``stored`` maps outputs returned as one triangle to their storage (``"lower"``).
        """
        from .formula import tokenize  # noqa: F401  (keeps the dependency explicit)

        properties = dict(properties or {})
        for oname, expr in outputs.items():
            if not isinstance(expr, MatrixExpr):
                # a string here is refused: text goes through the safe parser, never SymPy
                raise SpecError(
                    f"from_sympy: output {oname!r} must be a SymPy matrix expression, got "
                    f"{type(expr).__name__}; for formulas as text use parse_problem"
                )
            # the problem is stored as text, a tree: refuse what would not parse back
            size = tree_size(expr)
            if size > MAX_NODES:
                raise SpecError(
                    f"from_sympy: output {oname!r} written out as a formula has {size} nodes, "
                    f"over the limit of {MAX_NODES}"
                )
        atoms: dict[str, sp.Basic] = {}
        for expr in outputs.values():
            for a in expr.atoms(MatrixSymbol):
                atoms[a.name] = a
            for a in expr.free_symbols:
                if isinstance(a, sp.Symbol) and not isinstance(a, MatrixSymbol):
                    if not any(a in (m.shape[0], m.shape[1]) for m in atoms.values()):
                        atoms.setdefault(a.name, a)
        dim_names: dict[str, int | str] = {}
        for k, v in (dims or {}).items():
            dim_names[str(k)] = v
        for a in list(atoms.values()):
            if isinstance(a, MatrixSymbol):
                for s in a.shape:
                    if isinstance(s, sp.Symbol):
                        atoms.pop(s.name, None)
                        if s.name not in dim_names:
                            raise SpecError(
                                f"from_sympy: dimension {s.name} of {a.name} has no value; "
                                f"pass dims={{{s.name}: ...}}"
                            )
        lines = [f"[problem]\nname = {_toml_str(name)}\ndescription = {_toml_str(description)}\n"
                 f"dtype = {_toml_str(dtype)}\n\n[dims]"]
        for d, v in dim_names.items():
            lines.append(f"{d} = {_toml_str(v)}" if isinstance(v, str) else f"{d} = {v}")
        lines.append("\n[inputs]")
        for nm, a in atoms.items():
            props = [p for s, ps in properties.items() if getattr(s, "name", s) == nm for p in ps]
            if isinstance(a, MatrixSymbol):
                shape = ", ".join(_dim_text(s) for s in a.shape)
                lines.append(f"{nm} = {{ shape = [{shape}], properties = {_toml_list(props)} }}")
            else:
                lines.append(f"{nm} = {{ shape = [], properties = {_toml_list(props)} }}")
        lines.append("\n[outputs]")
        lines += _output_lines(outputs, dict(stored or {}))
        text = "\n".join(lines) + "\n"
        if search:
            import tomli_w

            text += "\n" + tomli_w.dumps({"search": dict(search)})
        return parse_problem(text, origin=f"<from_sympy:{name}>")


def _output_lines(outputs: Mapping[str, sp.Basic], stored: Mapping[str, str]) -> list[str]:
    """``[outputs]`` of :meth:`Problem.from_sympy`: one line per output, a table for one
    stored as a triangle."""
    for nm in stored:
        if nm not in outputs:
            raise SpecError(f"from_sympy: stored: {nm!r} is not an output; outputs: "
                            f"{', '.join(outputs)}")
    lines = []
    for nm, expr in outputs.items():
        formula = _toml_str(_formula_text(expr))
        if nm in stored:
            lines.append(f"{nm} = {{ formula = {formula}, store = {_toml_str(stored[nm])} }}")
        else:
            lines.append(f"{nm} = {formula}")
    return lines


class _Names(Mapping[sp.Basic, str]):
    """Definition and output names by canonical form, worked out when a note needs one."""

    def __init__(self, named: list[tuple[str, sp.Basic]], fb: FactBase) -> None:
        self._named, self._fb = named, fb
        self._map: dict[sp.Basic, str] | None = None

    def _get_map(self) -> dict[sp.Basic, str]:
        if self._map is None:
            from .properties import canonical

            self._map = {}
            for nm, e in self._named:
                self._map.setdefault(canonical(e, self._fb), nm)
        return self._map

    def __getitem__(self, key: sp.Basic) -> str:
        return self._get_map()[key]

    def __iter__(self) -> Iterator[sp.Basic]:
        return iter(self._get_map())

    def __len__(self) -> int:
        return len(self._get_map())


def _dim_text(s: sp.Basic) -> str:
    if isinstance(s, sp.Symbol):
        return _toml_str(s.name)
    if getattr(s, "is_Integer", False):
        return str(int(s))
    raise SpecError(
        f"from_sympy: a matrix dimension must be a dimension symbol or an integer, got {s}; "
        "declare a derived dimension instead (dims={k: 'n // 2'})"
    )


def _toml_str(text: object) -> str:
    """A TOML basic string (JSON's escapes are valid TOML)."""
    return json.dumps(str(text))


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(_toml_str(i) for i in items) + "]"


def _formula_text(e: sp.Basic) -> str:
    """Print a SymPy matrix expression in the formula language (round-trips through the
    parser)."""
    from sympy.matrices.expressions import Identity, Inverse, MatAdd, MatMul, MatPow, Transpose

    if isinstance(e, (MatrixSymbol, sp.Symbol)):
        return e.name
    if isinstance(e, Identity):
        return f"eye({e.shape[0]})"
    if isinstance(e, Transpose):
        return f"transpose({_formula_text(e.arg)})"
    if isinstance(e, Inverse):
        return f"inv({_formula_text(e.arg)})"
    if isinstance(e, MatPow) and e.exp.is_Integer:
        base = _formula_text(e.base if e.exp > 0 else Inverse(e.base))
        return "*".join([f"({base})"] * abs(int(e.exp)))
    if isinstance(e, MatMul):
        # the coefficient multiplies the product of the matrices as a whole: "c*(A*(B + C))"
        # parses back without the coefficient being distributed into the sum
        scalars = [a for a in e.args if not isinstance(a, MatrixExpr)]
        mats = "*".join(f"({_formula_text(a)})" for a in e.args if isinstance(a, MatrixExpr))
        if not scalars:
            return mats
        return "*".join(f"({_formula_text(a)})" for a in scalars) + f"*({mats})"
    if isinstance(e, sp.Mul):
        return "*".join(f"({_formula_text(a)})" for a in e.args)
    if isinstance(e, (MatAdd, sp.Add)):
        return " + ".join(f"({_formula_text(a)})" for a in e.args)
    if e.is_Integer or e.is_Float:
        return f"({e})" if e < 0 else str(e)
    if e.is_Rational:
        return f"({e.p}/{e.q})"
    raise SpecError(f"from_sympy: cannot express {e} ({type(e).__name__}) in the formula language")


# -- parsing files -------------------------------------------------------------------------


def _expect_table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SpecError(f"{where}: expected a table (mapping), got {type(value).__name__}")
    return value


def _check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not _IDENT.match(name):
        raise SpecError(f"{where}: {name!r} is not a valid name (letters, digits, '_')")
    if name in RESERVED:
        raise SpecError(
            f"{where}: {name!r} is reserved; reserved names: {', '.join(sorted(RESERVED))} "
            "(the functions inv, transpose, eye, I and the transpose suffix T)"
        )
    return name


def check_problem_name(name: Any, where: str) -> str:
    """A problem name is part of the file names of its plans and studies: letters, digits,
    ``_``, ``-`` and ``.``, not starting with ``.`` or ``-``, at most :data:`MAX_NAME`
    characters."""
    if not isinstance(name, str) or not name:
        raise SpecError(f"{where} must be a non-empty string, got {name!r}")
    if len(name) > MAX_NAME:
        raise SpecError(
            f"{where}: {_short_text(name)} has {len(name)} characters; a problem name has at "
            f"most {MAX_NAME} (it becomes part of the plan's file name)"
        )
    if not _PROBLEM_NAME.match(name):
        bad = sorted({c for c in name if not (c.isascii() and (c.isalnum() or c in "_.-"))})
        if len(bad) == 1:
            what = f"the character {bad[0]!r} is not allowed"
        elif bad:
            what = f"the characters {' '.join(map(repr, bad))} are not allowed"
        else:
            what = "it must not start with '.' or '-'"
        raise SpecError(
            f"{where}: {_short_text(name)} is not a valid problem name ({what}); use letters, "
            "digits, '_', '-' and '.' (it becomes part of the plan's file name)"
        )
    return name


def _short_text(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _default_name(origin: str) -> str:
    """The file's stem, made a valid problem name."""
    if origin.startswith("<"):
        return "problem"
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(origin).stem)[:MAX_NAME]
    if not stem or not _PROBLEM_NAME.match(stem):
        stem = ("p" + stem)[:MAX_NAME] if stem else "problem"
    return stem


def parse_problem(text: str, origin: str = "<string>", fmt: str | None = None) -> Problem:
    """Parse and validate problem text (TOML, or YAML when ``fmt='yaml'`` or the origin ends
    in ``.yaml``/``.yml``).

    A pipeline of small readers, each naming the table or field it refuses: the document, its
    ``[problem]`` table, ``[dims]`` (with aliases and the default sizes), ``[inputs]``, the
    formula tables, and last the checks that need the whole problem.
    """
    data = _read_document(text, origin, fmt)
    name, description, dtype = _parse_meta(data, origin)
    dims = _parse_dims(data, origin)
    aliases = _dim_aliases(dims, origin)
    dims = {d: v for d, v in dims.items() if d not in aliases}
    # the sizes at the defaults, to check bandwidths against (errors in dims surface here)
    default_sizes = Problem(
        name=name, description="", dims=dims, inputs={}, definitions={}, outputs={},
        origin=origin, aliases=aliases,
    ).resolve_dims()
    for alias, target in aliases.items():
        default_sizes[alias] = default_sizes[target]
    all_dims = {**dims, **{a: dims[t] for a, t in aliases.items()}}
    raw_inputs = _expect_table(data.get("inputs", {}), f"{origin}: [inputs]")
    if not raw_inputs:
        raise SpecError(f"{origin}: [inputs] is empty; declare at least one input")
    inputs = {
        iname: _parse_input(iname, spec, all_dims, aliases, default_sizes, origin)
        for iname, spec in raw_inputs.items()
    }
    definitions, outputs, stored = _parse_formula_tables(data, inputs, all_dims, origin)
    problem = Problem(
        name=name,
        description=description,
        dims=dims,
        inputs=inputs,
        definitions=definitions,
        outputs=outputs,
        search=_expect_table(data.get("search", {}), f"{origin}: [search]"),
        dtype=dtype,
        source=text,
        origin=origin,
        aliases=aliases,
        stored=stored,
    )
    _validate_whole(problem, origin)
    return problem


def _read_document(text: str, origin: str, fmt: str | None) -> dict[str, Any]:
    """The document as a table whose keys are all known tables."""
    if fmt is None:
        fmt = "yaml" if origin.endswith((".yaml", ".yml")) else "toml"
    try:
        if fmt == "yaml":
            data = yaml.safe_load(text)
        else:
            data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{origin}: not valid TOML: {exc}") from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"{origin}: not valid YAML: {exc}") from exc
    except (ValueError, TypeError, RecursionError) as exc:
        raise SpecError(f"{origin}: cannot read the file: {exc}") from exc
    if data is None:
        data = {}
    data = _expect_table(data, origin)
    for key in data:
        if key not in TOP_LEVEL:
            raise SpecError(
                f"{origin}: unknown table {key!r}; valid tables: {', '.join(TOP_LEVEL)}"
            )
    return data


def _parse_meta(data: Mapping[str, Any], origin: str) -> tuple[str, str, str]:
    """``[problem]``: the name, description and dtype."""
    meta = _expect_table(data.get("problem", {}), f"{origin}: [problem]")
    for key in meta:
        if key not in ("name", "description", "dtype"):
            raise SpecError(
                f"{origin}: [problem]: unknown field {key!r}; valid: name, description, dtype"
            )
    name = check_problem_name(meta.get("name", _default_name(origin)), f"{origin}: [problem].name")
    description = meta.get("description", "")
    if not isinstance(description, str):
        raise SpecError(f"{origin}: [problem].description must be a string")
    dtype = meta.get("dtype", "float64")
    if dtype not in DTYPES:
        raise SpecError(f"{origin}: [problem].dtype {dtype!r} is not supported; valid: {DTYPES}")
    return name, description, dtype


def _parse_dims(data: Mapping[str, Any], origin: str) -> dict[str, int | str]:
    """``[dims]``: each a positive integer or a formula over the other dimensions."""
    raw = _expect_table(data.get("dims", {}), f"{origin}: [dims]")
    dims: dict[str, int | str] = {}
    for dname, value in raw.items():
        where = f"{origin}: dims.{dname}"
        _check_name(dname, where)
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise SpecError(
                f"{where}: must be a positive integer or a formula string such as \"n // 2\", "
                f"got {value!r}"
            )
        if isinstance(value, int) and value < 1:
            raise SpecError(f"{where}: a dimension must be a positive integer, got {value}")
        if isinstance(value, str):
            fn = parse_dim_formula(value, where)
            for ref in fn.names:  # type: ignore[attr-defined]
                if ref not in raw:
                    raise SpecError(
                        f"{where}: {value!r} refers to unknown dimension {ref!r}; dimensions: "
                        f"{', '.join(raw)}"
                    )
        dims[dname] = value
    return dims


def _parse_input(iname: str, spec: Any, all_dims: Mapping[str, Any],
                 aliases: Mapping[str, str], default_sizes: Mapping[str, int],
                 origin: str) -> InputSpec:
    """One ``[inputs]`` entry: shape, properties (closed under inference), band, description."""
    where = f"{origin}: inputs.{iname}"
    _check_name(iname, where)
    if iname in all_dims:
        raise SpecError(f"{where}: the name {iname!r} is already a dimension")
    spec = _expect_table(spec, where)
    for key in spec:
        if key not in INPUT_KEYS:
            raise SpecError(
                f"{where}: unknown field {key!r}; valid fields: {', '.join(INPUT_KEYS)}"
            )
    if "shape" not in spec:
        raise SpecError(f"{where}: missing field 'shape' (e.g. shape = [\"n\", \"n\"])")
    shape = _parse_shape(spec["shape"], all_dims, where)
    props = spec.get("properties", [])
    if isinstance(props, str):
        props = [props]
    if not isinstance(props, list):
        raise SpecError(f"{where}.properties: expected a list of property names")
    sym_shape = None if not shape else tuple(
        sp.Integer(s) if isinstance(s, int) else sp.Symbol(aliases.get(s, s)) for s in shape
    )
    closed = validate_properties(props, sym_shape, f"{where}.properties")  # type: ignore[arg-type]
    declared = tuple(p for p in _canonical_list(props, f"{where}.properties") if p in closed)
    desc = spec.get("description", "")
    if not isinstance(desc, str):
        raise SpecError(f"{where}.description must be a string")
    band: Band | None = None
    if "bandwidth" in spec:
        sizes = None if not shape else tuple(
            s if isinstance(s, int) else default_sizes[s] for s in shape
        )
        band = validate_bandwidth(spec["bandwidth"], sizes, closed, f"{where}.bandwidth")  # type: ignore[arg-type]
    return InputSpec(iname, shape, declared, desc, band)


def _parse_formula_tables(data: Mapping[str, Any], inputs: Mapping[str, InputSpec],
                    all_dims: Mapping[str, Any], origin: str
                    ) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """``[definitions]`` and ``[outputs]``, each name defined once, and the outputs stored
    as one triangle."""
    definitions = _formula_table(data.get("definitions", {}), f"{origin}: [definitions]")
    outputs, stored = _output_table(data.get("outputs", {}), f"{origin}: [outputs]")
    if not outputs:
        raise SpecError(f"{origin}: [outputs] is empty; give at least one output formula")
    for nm in list(definitions) + list(outputs):
        if nm in inputs or nm in all_dims:
            raise SpecError(f"{origin}: {nm!r} is defined twice (as an input or dimension too)")
    for nm in definitions:
        if nm in outputs:
            raise SpecError(f"{origin}: {nm!r} is both a definition and an output")
    return definitions, outputs, stored


#: How an output may be stored: ``full`` (the default) or ``lower``, a symmetric output's
#: lower triangle only (the strict upper triangle is left unspecified, as LAPACK's ``uplo``).
OUTPUT_STORES = ("full", "lower")
_OUTPUT_FIELDS = ("formula", "store")


def _output_table(raw: Any, where: str) -> tuple[dict[str, str], dict[str, str]]:
    """``[outputs]``: each a formula string, or a table ``{ formula = "...", store =
    "lower" }``; returns the formulas and the outputs stored as one triangle."""
    table = _expect_table(raw, where)
    formulas: dict[str, str] = {}
    stored: dict[str, str] = {}
    for nm, entry in table.items():
        _check_name(nm, f"{where}.{nm}")
        if isinstance(entry, Mapping):
            for key in entry:
                if key not in _OUTPUT_FIELDS:
                    raise SpecError(f"{where}.{nm}: unknown field {key!r}; valid: "
                                    f"{', '.join(_OUTPUT_FIELDS)}")
            if "formula" not in entry:
                raise SpecError(f"{where}.{nm}: missing field 'formula'")
            store = entry.get("store", "full")
            if store not in OUTPUT_STORES:
                raise SpecError(f"{where}.{nm}.store: {store!r} is not a storage; valid: "
                                f"{', '.join(OUTPUT_STORES)}")
            if store != "full":
                stored[nm] = store
            entry = entry["formula"]
        if not isinstance(entry, str):
            raise SpecError(f"{where}.{nm}: expected a formula string or a table with "
                            f"'formula', got {entry!r}")
        formulas[nm] = entry
    return formulas, stored


def _validate_whole(problem: Problem, origin: str) -> None:
    """What needs the whole problem: the default sizes, every formula parsed, partial accesses
    inside their matrices, and the ``[search]`` table."""
    from .knobs import validate_search  # late import: space depends on spec

    try:
        values = problem.resolve_dims()  # dims formulas evaluate at the defaults
        _ = problem.expressions  # parse every formula now: errors surface at load time
        _check_indices(problem, values)
        _check_stored(problem)
        validate_search(problem)
    except RecursionError:
        raise SpecError(
            f"{origin}: the formulas are nested too deeply to analyse; split them into "
            "[definitions]"
        ) from None


def _check_stored(problem: Problem) -> None:
    """An output stored as one triangle is square and symmetric (by the project's own
    inference: the declared properties and the formula's structure)."""
    if not problem.stored:
        return
    from .properties import SYMMETRIC

    fb = problem.facts()
    for nm in problem.stored:
        expr = problem.expressions[nm]
        if expr.shape[0] != expr.shape[1] or SYMMETRIC not in fb.facts(expr):
            raise SpecError(f"{problem.origin}: outputs.{nm}.store: 'lower' stores one "
                            f"triangle of a symmetric matrix, and {nm} = "
                            f"{_short_text(problem.outputs[nm])} is not known to be symmetric; "
                            "use store = 'full'")


def _check_indices(problem: Problem, values: Mapping[str, int]) -> None:
    """Every partial access (``X[i, j]``) reads inside its matrix at the default sizes (other
    sizes are checked when a candidate is derived)."""
    from sympy.matrices.expressions import MatrixSlice

    subs = {problem.dim_symbols[d]: v for d, v in values.items()}
    for nm in problem.outputs:
        for node in nodes(problem.expressions[nm]):
            if not isinstance(node, MatrixSlice):
                continue
            for (start, stop, _), size in zip((node.rowslice, node.colslice), node.parent.shape,
                                              strict=True):
                lo, hi, n = (int(x.subs(subs)) for x in (start, stop, size))
                if not 0 <= lo < hi <= n:
                    raise SpecError(f"{problem.origin}: outputs.{nm}: index range {lo}:{hi} is "
                                    f"outside the {n} rows or columns of "
                                    f"{_short_text(str(node.parent))} at the default sizes")


def _dim_aliases(dims: Mapping[str, int | str], origin: str) -> dict[str, str]:
    """Dimensions defined as exactly another dimension (``m = "n"``, or ``"(n)"``) -> the
    dimension they are (followed through chains: ``p = "m"`` with ``m = "n"`` is n)."""
    direct: dict[str, str] = {}
    for d, v in dims.items():
        if isinstance(v, str):
            ref = v.strip()
            while ref.startswith("(") and ref.endswith(")"):
                ref = ref[1:-1].strip()
            if ref in dims:
                direct[d] = ref
    out: dict[str, str] = {}
    for d in direct:
        chain = [d]
        target = direct[d]
        while target in direct:
            if target in chain:
                cycle = " -> ".join(chain[chain.index(target) :] + [target])
                raise SpecError(f"{origin}: dims: cyclic definition {cycle}")
            chain.append(target)
            target = direct[target]
        out[d] = target
    return out


def _canonical_list(props: list[Any], where: str) -> list[str]:
    from .properties import normalize_property

    return [normalize_property(p, where) for p in props]


def _parse_shape(shape: Any, dims: Mapping[str, Any], where: str) -> tuple[str | int, ...]:
    if shape in ("scalar", []):
        return ()
    if isinstance(shape, (str, int)) and not isinstance(shape, bool):
        shape = [shape]
    if not isinstance(shape, list) or len(shape) > 2:
        raise SpecError(
            f"{where}.shape: expected [rows, cols], [rows] (a column vector) or [] (a scalar), "
            f"got {shape!r}"
        )
    out: list[str | int] = []
    for s in shape:
        if isinstance(s, bool):
            raise SpecError(f"{where}.shape: {s!r} is not a dimension")
        if isinstance(s, int):
            if s < 1:
                raise SpecError(f"{where}.shape: sizes must be positive, got {s}")
            out.append(s)
        elif isinstance(s, str):
            if s not in dims:
                close = difflib.get_close_matches(s, list(dims), n=2)
                hint = f" (did you mean {' or '.join(close)}?)" if close else ""
                raise SpecError(
                    f"{where}.shape: unknown dimension {s!r}{hint}; dimensions: "
                    f"{', '.join(dims) or '(none declared in [dims])'}"
                )
            out.append(s)
        else:
            raise SpecError(f"{where}.shape: {s!r} is not a dimension name or a positive integer")
    if len(out) == 1:
        out.append(1)
    return tuple(out)


def _formula_table(raw: Any, where: str) -> dict[str, str]:
    table = _expect_table(raw, where)
    out: dict[str, str] = {}
    for nm, text in table.items():
        _check_name(nm, f"{where}.{nm}")
        if not isinstance(text, str):
            raise SpecError(f"{where}.{nm}: expected a formula string, got {text!r}")
        out[nm] = text
    return out


def _parse_formulas(problem: Problem) -> dict[str, sp.Basic]:
    names: dict[str, sp.Basic] = dict(problem.symbols)
    formulas = {**problem.definitions, **problem.outputs}
    where_of = {nm: f"{problem.origin}: definitions.{nm}" for nm in problem.definitions}
    where_of.update({nm: f"{problem.origin}: outputs.{nm}" for nm in problem.outputs})
    done: dict[str, sp.Basic] = {}
    stack: list[str] = []

    def cyclic(nm: str, cycle: list[str]) -> SpecError:
        outs = [n for n in dict.fromkeys(cycle) if n in problem.outputs]
        who = ""
        if len(outs) > 1:
            who = f" (outputs {', '.join(outs)} use each other)"
        elif outs and len(cycle) == 2:
            who = f" (output {outs[0]} uses itself)"
        return SpecError(f"{where_of[nm]}: cyclic definition {' -> '.join(cycle)}{who}")

    def build(nm: str) -> sp.Basic:
        if nm in done:
            return done[nm]
        if nm in stack:
            raise cyclic(nm, stack[stack.index(nm) :] + [nm])
        if len(stack) >= MAX_CHAIN:
            raise SpecError(
                f"{where_of[nm]}: definitions refer to each other more than {MAX_CHAIN} deep "
                f"({stack[0]} -> {stack[1]} -> ...)"
            )
        stack.append(nm)
        env = dict(names)
        for ref in formula_names(formulas[nm], where_of[nm]):
            if ref in formulas and ref != nm:
                env[ref] = build(ref)
            elif ref == nm:
                raise cyclic(nm, [nm, nm])
        expr = parse_formula(formulas[nm], env, problem.dim_names, where_of[nm])
        stack.pop()
        done[nm] = expr
        return expr

    for nm in formulas:
        build(nm)
    for nm in problem.outputs:
        if not isinstance(done[nm], MatrixExpr):
            raise SpecError(f"{where_of[nm]}: a scalar expression ({_short_text(str(done[nm]))})"
                            "; an output is a matrix or a vector (x.T*y is a 1x1 matrix)")
    return done


# -- locating files ----------------------------------------------------------------------


def _embedded_dir() -> Path:
    """The shipped problems: the installed package data, or, when autotune
    is imported from a source checkout that was not installed, the
    checkout's own ``search_spaces/``."""
    try:
        return Path(str(resources.files("autotune.search_spaces")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "search_spaces"


def _search_dirs() -> list[Path]:
    dirs = [Path.cwd() / "search_spaces", _embedded_dir()]
    seen: list[Path] = []
    for d in dirs:
        if d.is_dir() and all(d.resolve() != s.resolve() for s in seen):
            seen.append(d)
    return seen


def problem_names() -> list[str]:
    names: list[str] = []
    for d in _search_dirs():
        for p in sorted(d.iterdir()):
            if p.suffix in (".toml", ".yaml", ".yml") and p.stem not in names:
                names.append(p.stem)
    return names


def load_problem(name_or_path: str | Path) -> Problem:
    """Load a problem by name (a file in ``search_spaces/``) or by path."""
    p = Path(name_or_path)
    if p.suffix in (".toml", ".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise SpecError(f"{p}: no such problem file")
        try:
            text = p.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError(f"{p}: cannot read: {exc}") from exc
        return parse_problem(text, origin=str(p))
    for d in _search_dirs():
        for suffix in (".toml", ".yaml", ".yml"):
            f = d / f"{name_or_path}{suffix}"
            if f.is_file():
                return parse_problem(f.read_text(), origin=f"search_spaces/{f.name}")
    names = problem_names()
    close = difflib.get_close_matches(str(name_or_path), names, n=2)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    raise SpecError(
        f"unknown problem {str(name_or_path)!r}{hint}; problems: {', '.join(names)}, "
        "or a path to a .toml/.yaml file"
    )
