"""Time reading + normalising + slicing every volume of a dataset, cold and from the cache.

    .venv/bin/python benchmarks/bench_scans.py data/msd_hippocampus [--out results/bench/scans.json]

"Cold" decodes every file (first pass in a fresh process); "cached" repeats the same call,
which must take volumes from the in-memory cache instead of decoding them again.
"""
import argparse
import time

import engine
import scans
from atomicio import write_json


def run_once(data_dir, size):
    t0 = time.perf_counter()
    loaded = scans.load_cases(scans.find_cases(data_dir))
    stack = scans.SliceStack(loaded, size=size, with_labels=True)
    return time.perf_counter() - t0, len(loaded), len(stack)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("data_dir", nargs="?", default="data/msd_hippocampus")
    p.add_argument("--size", type=int, nargs=2, default=[48, 64])
    p.add_argument("--out")
    a = p.parse_args()
    cold, n_cases, n_slices = run_once(a.data_dir, a.size)
    cached, _, _ = run_once(a.data_dir, a.size)
    res = {"cases": n_cases, "slices": n_slices, "cold_s": round(cold, 3), "cached_s": round(cached, 3),
           "machine": engine.machine_info(), **engine.git_info()}
    print(f"{n_cases} volumes -> {n_slices} slices of {a.size[0]}x{a.size[1]}: cold {cold:.2f} s, cached {cached:.2f} s")
    if a.out:
        write_json(a.out, res)


if __name__ == "__main__":
    main()
