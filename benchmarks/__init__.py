"""The asv benchmark suite of autotune (see ``asv.conf.json`` and ``benchmarks.py``)."""
