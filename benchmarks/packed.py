"""The cost of packed sequences (``resets``) and of the noise wrappers against a plain ``scan``.

    python -m benchmarks.packed [--reps 10] [--B 32] [--T 128] [--baseline REV]

The LSTM at the main configuration (B=32 T=128 I=64 H=256, float32), the time-major batch
form under ``jax.jit``: the forward (``ys``) and the forward+backward (``jax.value_and_grad``
of the mean of ``ys`` with respect to the parameters and the inputs). Variants:

- ``plain``: ``scan(cell, params, xs)``;
- ``resets``: a random pattern (each step starts a new sequence with probability 1/16);
- ``Dropout, key``: ``Dropout(LSTM, rate=0.25, recurrent_rate=0.25)`` with a key;
- ``Dropout, no key``: the same cell in evaluation mode;
- ``Zoneout, key``: ``Zoneout(LSTM, rate=0.1)`` with a key.

Resets and keys are arguments of the compiled programs (not constants XLA could fold).
``--baseline REV`` (a git revision of this repository, e.g. ``8ee6f05``, the commit before
``resets`` and ``key`` existed, extracted as ``python -m benchmarks --baseline`` does; or a
directory holding a ``recurrax/``) first compares the programs of the existing paths:
``scan`` without ``resets`` and ``key``, its gradient, ``backward="manual"``,
``checkpoint="carry"`` and ``projection="before"`` with ``reverse``, for the LSTM, the
reset-after GRU and a stack; identical jaxprs cannot differ in speed.
Each round times every variant once, right after an untimed call of the same program (as
``benchmarks/run.py`` does); each time is the median over ``--reps`` rounds. Prints a
Markdown table: milliseconds, and the ratio to ``plain`` (above 1: slower).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import jax
import jax.numpy as jnp

import recurrax


def programs(B: int, T: int, I: int, H: int) -> dict:
    """Name -> (forward, forward+backward, args), compiled."""
    lstm = recurrax.LSTM(H)
    params = lstm.init(jax.random.key(1), I)
    xs = jax.random.normal(jax.random.key(0), (T, B, I))
    resets = jax.random.bernoulli(jax.random.key(2), 1 / 16, (T, B))
    key = jax.random.key(3)
    variants = {
        "plain": (lstm, None, None),
        "resets": (lstm, resets, None),
        "Dropout, key": (recurrax.Dropout(lstm, rate=0.25, recurrent_rate=0.25), None, key),
        "Dropout, no key": (recurrax.Dropout(lstm, rate=0.25, recurrent_rate=0.25), None, None),
        "Zoneout, key": (recurrax.Zoneout(lstm, rate=0.1), None, key),
    }
    out = {}
    for name, (cell, r, k) in variants.items():
        def run(p, x, r, k, cell=cell):
            return recurrax.scan(cell, p, x, resets=r, key=k)[1]

        def loss(p, x, r, k, run=run):
            return jnp.mean(run(p, x, r, k))

        args = (params, xs, r, k)
        fwd = jax.jit(run).lower(*args).compile()
        fwd_bwd = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(*args).compile()
        out[name] = (fwd, fwd_bwd, args)
    return out


def same_programs(baseline) -> list:
    """``(cell, options, same forward, same gradient)``: this copy's jaxprs against ``baseline``'s."""
    rows = []
    for name in ("LSTM", "GRU, reset_after", "Stack(LSTM, GRU)"):
        for options in ({}, {"backward": "manual"}, {"checkpoint": "carry"}, {"projection": "before", "reverse": True}):
            programs = []
            for m in (recurrax, baseline):
                cell = {"LSTM": lambda m=m: m.LSTM(8), "GRU, reset_after": lambda m=m: m.GRU(8, reset_after=True),
                        "Stack(LSTM, GRU)": lambda m=m: m.Stack(m.LSTM(4), m.GRU(3))}[name]()
                params, xs = cell.init(jax.random.key(0), 3), jnp.ones((5, 4, 3))

                def run(p, x, m=m, cell=cell):
                    return m.scan(cell, p, x, length=jnp.array([5, 3, 0, 2]), **options)

                grad = jax.grad(lambda p, x, run=run: jnp.sum(run(p, x)[1]))
                programs.append((str(jax.make_jaxpr(run)(params, xs)), str(jax.make_jaxpr(grad)(params, xs))))
            (f, g), (f0, g0) = programs
            rows.append((name, options, f == f0, g == g0))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.packed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--B", type=int, default=32)
    parser.add_argument("--T", type=int, default=128)
    parser.add_argument("--baseline", metavar="REV", default=None,
                        help="a git revision (or a directory holding a recurrax/): compare the existing paths")
    args = parser.parse_args(argv)
    if args.baseline:
        from benchmarks.run import baseline

        with contextlib.ExitStack() as stack:  # removes the revision's temporary copy
            name, module, note, _ = baseline(args.baseline, stack)
            print(f"{name}: {note}\n")
            print("| cell | options | same forward program | same gradient program |\n|---|---|---|---|")
            for cell, options, f, g in same_programs(module):
                print(f"| {cell} | {options or 'defaults'} | {f} | {g} |")
    compiled = programs(args.B, args.T, 64, 256)
    thunks = [(name, which, f, a) for name, (fwd, fwd_bwd, a) in compiled.items()
              for which, f in (("forward", fwd), ("fwd+bwd", fwd_bwd))]
    times = {(name, which): [] for name, which, _, _ in thunks}
    for _ in range(args.reps):
        for name, which, f, a in thunks:
            jax.block_until_ready(f(*a))  # untimed: the previous program's threads settle
            t = time.perf_counter()
            jax.block_until_ready(f(*a))
            times[name, which].append(time.perf_counter() - t)
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    print(f"LSTM, B={args.B} T={args.T} I=64 H=256 float32, jit; median of {args.reps} "
          f"({jax.devices()[0].device_kind}, jax {jax.__version__})\n")
    print("| variant | forward ms | fwd+bwd ms | forward / plain | fwd+bwd / plain |")
    print("|---|---|---|---|---|")
    for name in compiled:
        f, b = ms[name, "forward"], ms[name, "fwd+bwd"]
        print(f"| {name} | {f:.2f} | {b:.2f} | {f / ms['plain', 'forward']:.2f} | "
              f"{b / ms['plain', 'fwd+bwd']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
