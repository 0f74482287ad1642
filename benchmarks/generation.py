"""Generation speed of the query engine on the built-in model, measured side by side in one run.

1. one image per pipeline call, as the reference code queries;
2. the engine (DiffusersTarget + cache) at several batch sizes;
3. a fully cached rerun, as a fraction of the first run's time.
Run: python benchmarks/generation.py [--n 64] [--steps 25]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _digits import private_split

from diffmia.cache import GenerationCache
from diffmia.execution import generate
from diffmia.records import Query
from diffmia.targets.diffusers import DiffusersTarget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8, 16, 32])
    args = parser.parse_args()
    _, records, members, _ = private_split(args.n, 0)
    queries = [Query(records[i]["caption"], seed=i, steps=args.steps, guidance=7.5) for i in members]
    single = DiffusersTarget("builtin", batch_size=1)
    single.generate(queries[:2])  # load and warm up outside the clock
    began = time.perf_counter()
    single.generate(queries)
    one_by_one = args.n / (time.perf_counter() - began)
    print(f"{args.n} text-to-image queries, {args.steps} steps, guidance 7.5, built-in model")
    print(f"  one image per call: {one_by_one:.2f} images/s")
    best = (0.0, 0, 0.0)
    for batch_size in args.batch_sizes:
        with tempfile.TemporaryDirectory() as tmp:
            target = DiffusersTarget("builtin", batch_size=batch_size)
            target.generate(queries[:2])
            cache = GenerationCache(Path(tmp))
            began = time.perf_counter()
            generate(target, queries, cache, chunk_size=max(32, batch_size), show_progress=False)
            first = time.perf_counter() - began
            began = time.perf_counter()
            generate(target, queries, cache, show_progress=False)
            rerun = time.perf_counter() - began
        rate = args.n / first
        print(
            f"  engine, batch {batch_size:>2}: {rate:.2f} images/s ({rate / one_by_one:.2f}x), "
            f"cached rerun {rerun:.2f} s = {rerun / first:.1%} of the first run"
        )
        best = max(best, (rate, batch_size, rerun / first))
    print(f"  best: batch {best[1]}, {best[0] / one_by_one:.2f}x one-per-call; cached rerun {best[2]:.1%}")


if __name__ == "__main__":
    main()
