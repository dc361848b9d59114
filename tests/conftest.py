"""Shared fixtures for the specification / inference / reference tests."""

from __future__ import annotations

import os

# Idle OpenBLAS threads must not keep a short test run alive (or spin while Hypothesis runs).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "12")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from autotune.spec import Problem, load_problem  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SEARCH_SPACES = REPO / "search_spaces"

# Small sizes for every shipped problem: each free dimension, keyed by problem name.
SMALL_DIMS = {
    "kalman": {"n": 12},  # k = 6
    "gls": {"n": 40},  # m = 5
    "mmse": {"n": 10},  # m = 20
    "tikhonov": {"n": 10},  # m = 20
    "enkf": {"n": 24, "N": 7},  # m = 6
    # large enough for the banded solve (a band under a quarter of n wide)
    "whittaker": {"n": 24},  # m = 22, W + lam D'D pentadiagonal
    "adi_heat": {"n": 16},  # I + r Dxx tridiagonal
}


def small_dims(problem: Problem) -> dict[str, int]:
    """Overrides that make every dimension of ``problem`` small (at most 60)."""
    dims = dict(SMALL_DIMS.get(problem.name, {}))
    for d in problem.free_dims:
        dims.setdefault(d, 8)
    return dims


@pytest.fixture(scope="session")
def dims_for():
    """``dims_for(problem)``: small dimension overrides for a problem."""
    return small_dims


@pytest.fixture(scope="session")
def kalman() -> Problem:
    return load_problem("kalman")


@pytest.fixture(scope="session")
def kalman_text() -> str:
    return (SEARCH_SPACES / "kalman.toml").read_text()


@pytest.fixture
def kalman_dims() -> dict[str, int]:
    return {"n": 12}
