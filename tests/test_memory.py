"""The heap policy: retained pages between calls, recorded in plans, applied by load_plan."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap

import pytest

from autotune.errors import KnobError, PlanError
from autotune.memory import HEAP_POLICIES, check_heap_policy

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Allocate, touch and free a 64 MiB block several times in a fresh process, and count the
# page faults of the repeats (after the first): the cost the heap policy exists to remove.
_FAULTS = textwrap.dedent("""
    import ctypes, json, resource, sys
    from autotune.memory import heap_policy, set_heap_policy
    applied = set_heap_policy(sys.argv[1])
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    size = 64 * 2**20
    def cycle():
        p = libc.malloc(size)
        ctypes.memset(p, 1, size)
        libc.free(p)
    cycle()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        cycle()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(json.dumps({"applied": applied, "policy": heap_policy(), "faults": faults}))
""")


def _faults(policy: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _FAULTS, policy], capture_output=True,
                         text=True, check=True, timeout=120)
    return json.loads(out.stdout)


@pytest.mark.skipif(not GLIBC, reason="the heap policy needs glibc's mallopt (Linux)")
def test_retain_reuses_pages_that_system_faults_in_again():
    retain, system = _faults("retain"), _faults("system")
    assert retain["applied"] and retain["policy"] == "retain"
    assert system["applied"] and system["policy"] == "system"
    # 5 x 64 MiB: with fresh mmaps every cycle faults its pages in again (16384 x 4 KiB,
    # or 32 x 2 MiB with transparent huge pages); retained, the heap already has them
    assert system["faults"] >= 5 * 32
    assert retain["faults"] <= system["faults"] // 4
    assert retain["faults"] < 100


def test_unknown_policy_names_the_choices():
    with pytest.raises(KnobError, match="retain, system"):
        check_heap_policy("huge")
    from autotune.measure import Worker

    with pytest.raises(KnobError, match="retain"):
        Worker(heap="bogus")
    assert set(HEAP_POLICIES) == {"retain", "system"}


def _plan_with(tmp_path, environment):
    import hashlib

    from autotune.plan import Plan, save_plan

    src = "[dims]\nn = 4\n"
    fields = dict(
        problem={"name": "p", "source": src, "sha256": hashlib.sha256(src.encode()).hexdigest(),
                 "origin": "p.toml"},
        dims={"n": 4}, dtype="float64", params={}, target={"name": "numba-t1"},
        timing={"samples": [0.1], "median": 0.1}, baselines={}, speedups={},
        accuracy={"errors": {}}, flops=1.0, machine={},
    )
    if environment is not None:
        fields["environment"] = environment
    return Plan.build(**fields), save_plan


def test_plan_records_heap_and_refuses_a_bad_one(tmp_path):
    from autotune.plan import read_plan

    plan, save = _plan_with(tmp_path, {"heap": "retain"})
    assert read_plan(save(plan, tmp_path)).heap == "retain"
    old, _ = _plan_with(tmp_path, None)  # plans from before the setting
    assert old.heap == "system"
    with pytest.raises(PlanError, match="environment.heap 'lots'.*retain, system"):
        _plan_with(tmp_path, {"heap": "lots"})
    with pytest.raises(PlanError, match="'environment' must be a JSON object"):
        _plan_with(tmp_path, "retain")


@pytest.mark.skipif(not GLIBC, reason="the heap policy needs glibc's mallopt (Linux)")
def test_load_plan_applies_the_plans_policy_and_the_override(tmp_path):
    """In a fresh process: the committed example plan (tuned under 'retain') switches the
    process to 'retain'; heap='system' keeps the default; a bad value names the argument."""
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "results" / "example-plan-kalman-n200.json"
    code = textwrap.dedent(f"""
        import warnings
        warnings.simplefilter("ignore")
        from autotune import load_plan
        from autotune.memory import heap_policy
        from autotune.plan import read_plan
        path = {str(example)!r}
        print(read_plan(path).heap)
        load_plan(path, heap="system")
        print(heap_policy())
        fn = load_plan(path)
        print(heap_policy(), fn.heap)
        try:
            load_plan(path, heap="nope")
        except Exception as exc:
            print(type(exc).__name__, exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True).stdout.splitlines()
    assert out[0] == "retain", "the example plan should be tuned under the retain policy"
    assert out[1] == "system"
    assert out[2] == "retain retain"
    assert out[3].startswith("KnobError") and "heap 'nope'" in out[3]
