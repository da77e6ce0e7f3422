"""``make bench``: every way of scoring one generated hour, measured in one run, as a table and JSON.

    python -m benchmarks.run                      # 10,000 devices x 720 rows x 5 tags, every row
    python -m benchmarks.run --quick              # 1,000 devices, memory at three sizes
    python -m benchmarks.run --devices 100000 --contenders dask-batches,flow   # the floors and the flow at scale

Ratios are to the scikit-learn floor measured in the same run, since timings on
a shared machine drift between runs but much less within one.

This module only reads the flags; the measuring is :mod:`benchmarks.suite`.
Dask's local workers are spawned processes that import the main module again
before they start: kept this light, the flow's workers start as they do under
the ``fleetscore`` command, whose module (:mod:`flows.cli`) is light too.
"""

from __future__ import annotations

import argparse

CONTENDERS = ["serial", "spark", "dask-per-device", "joblib", "dask-batches", "flow"]
"""The rows measured besides the two floors, in the order of the table (:data:`benchmarks.suite.ALTERNATIVES`)."""
WORKER_BATCHES, QUICK_WORKER_BATCHES = 500, 50
"""Batches of the worker curve (:mod:`benchmarks.worker_memory`) at each memory size: by default, with ``--quick``."""


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    top = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--devices", type=int, default=10_000)
    top.add_argument("--rows", type=int, default=720, help="rows per device in the hour (5 s grid, at most 720)")
    top.add_argument("--tags", type=int, default=5, help="tags per device (at most 5)")
    top.add_argument("--workers", type=int, default=2, help="Dask workers, joblib processes, Spark cores")
    top.add_argument("--contenders", default=",".join(CONTENDERS),
                     help="rows measured besides the two floors, comma-separated among %(default)s; "
                          "'' measures the floors only (and the memory rows, unless --memory-sizes '')")
    top.add_argument("--per-device-sample", type=int, default=200,
                     help="devices scored by the one-task-per-device row (its time is scaled to the fleet)")
    top.add_argument("--memory-sizes", default=None,
                     help="fleet sizes of the memory rows (the flow with its scheduler and workers in their "
                          "own processes) and of the worker curve, comma-separated; default the fleet's own "
                          "size; '' skips both")
    top.add_argument("--worker-batches", type=int, default=None,
                     help="batches one fresh worker scores in turn at each memory size, its memory reported "
                          f"along the way (benchmarks/worker_memory.py); default {WORKER_BATCHES}; 0 skips it")
    top.add_argument("--quick", action="store_true",
                     help="1,000 devices, memory at 300,1000,3000 unless --memory-sizes is given, "
                          f"{QUICK_WORKER_BATCHES} worker batches unless --worker-batches is: a few minutes")
    args = top.parse_args(argv)
    if args.quick:
        args.devices = 1000
        args.memory_sizes = "300,1000,3000" if args.memory_sizes is None else args.memory_sizes
    if args.worker_batches is None:
        args.worker_batches = QUICK_WORKER_BATCHES if args.quick else WORKER_BATCHES
    if args.worker_batches < 0:
        top.error(f"--worker-batches {args.worker_batches}: give a count of batches, or 0 to skip the worker curve")
    args.contenders = _names(args.contenders)
    unknown = set(args.contenders) - set(CONTENDERS)
    if unknown:
        top.error(f"unknown contenders {sorted(unknown)}: choose among {', '.join(CONTENDERS)}")
    args.memory_sizes = [int(n) for n in _names(str(args.devices) if args.memory_sizes is None
                                                else args.memory_sizes)]
    return args


def main(argv: list[str] | None = None) -> int:
    from benchmarks import suite

    return suite.main(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
