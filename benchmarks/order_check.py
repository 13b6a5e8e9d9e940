"""Does a timed call pay for the implementation that ran before it?

    python -m benchmarks.order_check [--cell lstm] [--B 8] [--reps 30]

Times recurrax's compiled forward (T=128 I=64 H=256) right after torch's forward+backward
and right after a call of its own, interleaved, and prints both medians. This is why
``benchmarks/run.py`` makes an untimed call before each timed one: torch's OpenMP threads
keep spinning for a while after it returns, and take a core from whatever runs next.
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks.anchors import Config
from benchmarks.run import prepare


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.order_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cell", default="lstm", choices=["rnn", "lstm", "gru", "gru_ra"])
    parser.add_argument("--B", type=int, default=8)
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args(argv)
    cfg = Config(B=args.B, T=128, I=64, H=256)
    _, fwd, _ = prepare("recurrax", args.cell, cfg, "cpu")
    row, _, torch_fwd_bwd = prepare("torch", args.cell, cfg, "cpu")
    if torch_fwd_bwd is None:
        raise SystemExit(f"torch: {row['missing']}")
    after = {"torch": [], "itself": []}
    for _ in range(args.reps):
        for before, warm in (("torch", torch_fwd_bwd), ("itself", fwd)):
            warm()
            t = time.perf_counter()
            fwd()
            after[before].append(time.perf_counter() - t)
    for before, times in after.items():
        print(f"recurrax {args.cell} forward, B={args.B}, right after {before}: "
              f"{1e3 * statistics.median(times):.2f} ms (median of {args.reps})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
