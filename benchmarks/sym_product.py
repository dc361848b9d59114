"""Timing of :func:`autotune.kernels.sym_product` against a full GEMM (a script, not an asv suite).

The Kalman filter's innovation covariance ``S = R + H @ (Sigma @ H.T)`` is symmetric, so only its
lower triangle needs computing. With ``a = H`` (``k x n``, C order) and ``b = Sigma @ H.T``
(``n x k``, C order), this script times, per size and with 2 BLAS threads (threadpoolctl, inside
a context: nothing global is set):

* ``a @ b`` in NumPy and ``pt.dot`` compiled with Numba (the full GEMM, ``2 k^2 n`` flops);
* ``sym_product(a, b)`` (Numba) for several row-block counts and the default rule;
* the same with ``c``: ``R + a @ b`` against ``sym_product(a, b, c=R, beta=1)``.

Every timing is the median of ``--repeats`` calls, interleaved (one call of each variant per
round) so that drift in the machine's speed hits all variants alike. Run from the repository root::

    OPENBLAS_THREAD_TIMEOUT=12 python benchmarks/sym_product.py [--sizes 2000x4000,500x1000]

The numbers chose the default of :func:`autotune.kernels.sym_product_blocks`.
"""

from __future__ import annotations

import argparse
import statistics
import time

BLOCKS = (1, 2, 3, 4, 6, 8)


def _parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        k, n = item.lower().split("x")
        sizes.append((int(k), int(n)))
    return sizes


def _variants(k: int, blocks: tuple[int, ...]):
    """``(name, with_c, blocks_or_None, callable(a, b, r))`` for every variant at size ``k``."""
    import numpy as np
    import pytensor
    import pytensor.tensor as pt

    from autotune.kernels import sym_product, sym_product_blocks

    a = pt.matrix("a")
    b = pt.matrix("b")
    r = pt.matrix("r")

    def compiled(inputs, out):
        f = pytensor.function(inputs, out, mode="NUMBA")
        f.trust_input = True
        return f

    out = []
    out.append(("numpy a @ b", False, None, lambda av, bv, rv: av @ bv))
    f = compiled([a, b], pt.dot(a, b))
    out.append(("pt.dot (numba)", False, None, lambda av, bv, rv, f=f: f(av, bv)))
    for nb in blocks:
        f = compiled([a, b], sym_product(a, b, blocks=nb))
        out.append((f"sym_product blocks={nb}", False, nb, lambda av, bv, rv, f=f: f(av, bv)))
    f = compiled([a, b], sym_product(a, b))
    name = f"sym_product default ({sym_product_blocks(k)})"
    out.append((name, False, None, lambda av, bv, rv, f=f: f(av, bv)))

    out.append(("numpy R + a @ b", True, None, lambda av, bv, rv: np.add(rv, av @ bv)))
    f = compiled([a, b, r], r + pt.dot(a, b))
    out.append(("R + pt.dot (numba)", True, None, lambda av, bv, rv, f=f: f(av, bv, rv)))
    for nb in blocks:
        f = compiled([a, b, r], sym_product(a, b, r, beta=1.0, blocks=nb))
        name = f"sym_product(c=R) blocks={nb}"
        out.append((name, True, nb, lambda av, bv, rv, f=f: f(av, bv, rv)))
    f = compiled([a, b, r], sym_product(a, b, r, beta=1.0))
    name = f"sym_product(c=R) default ({sym_product_blocks(k)})"
    out.append((name, True, None, lambda av, bv, rv, f=f: f(av, bv, rv)))
    return out


def bench_size(k: int, n: int, repeats: int, threads: int, blocks: tuple[int, ...]) -> None:
    import numpy as np
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    h = rng.standard_normal((k, n))
    g = rng.standard_normal((n, n)) / np.sqrt(n)
    sigma = g @ g.T + np.eye(n)
    rm = rng.standard_normal((k, k)) / np.sqrt(k)
    r_mat = rm @ rm.T + np.eye(k)
    with threadpool_limits(limits=threads, user_api="blas"):
        a = h  # (k, n), C order
        b = sigma @ h.T  # (n, k), C order
        variants = _variants(k, blocks)
        ref = a @ b
        ref_c = r_mat + ref
        scale = np.abs(ref_c).max()
        times: dict[str, list[float]] = {name: [] for name, *_ in variants}
        errors: dict[str, float] = {}
        for name, with_c, _, fn in variants:  # warm-up (compilation, first-touch) and check
            res = np.asarray(fn(a, b, r_mat))
            errors[name] = float(np.abs(res - (ref_c if with_c else ref)).max() / scale)
        for _ in range(repeats):
            for name, _, _, fn in variants:
                t0 = time.perf_counter()
                fn(a, b, r_mat)
                times[name].append(time.perf_counter() - t0)

    gflop = 2.0 * k * k * n / 1e9
    base = {False: statistics.median(times["numpy a @ b"])}
    base[True] = statistics.median(times["numpy R + a @ b"])
    print(
        f"\nk={k}, n={n}: full GEMM {gflop:.1f} GFLOP; {threads} BLAS threads; "
        f"median (min) of {repeats} interleaved calls"
    )
    print(
        f"{'variant':34s} {'median ms':>10s} {'min ms':>8s} {'vs numpy':>9s} "
        f"{'GEMM-equiv GFLOP/s':>19s} {'rel err':>8s}"
    )
    for name, with_c, _, _ in variants:
        med = statistics.median(times[name])
        print(
            f"{name:34s} {med * 1e3:10.1f} {min(times[name]) * 1e3:8.1f} "
            f"{base[with_c] / med:8.2f}x {gflop / med:19.1f} {errors[name]:8.1e}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="2000x4000,500x1000", help="k x n pairs, comma-separated"
    )
    parser.add_argument("--repeats", type=int, default=5, help="interleaved calls per variant")
    parser.add_argument("--threads", type=int, default=2, help="BLAS threads (threadpoolctl)")
    parser.add_argument(
        "--blocks", default=",".join(map(str, BLOCKS)), help="row-block counts, comma-separated"
    )
    args = parser.parse_args(argv)
    blocks = tuple(int(x) for x in args.blocks.split(","))
    for k, n in _parse_sizes(args.sizes):
        bench_size(k, n, max(1, args.repeats), args.threads, blocks)


if __name__ == "__main__":
    main()
