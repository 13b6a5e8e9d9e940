"""Newton iterations to converge for each ``parallel_scan`` method, on stable and chaotic RNNs and an LSTM.

    python -m benchmarks.parallel_methods [--T 128] [--H 8] [--max-iters 128]

One example, float32, inputs ``N(0, 1)`` with 4 features, untrained cells:

- ``rnn W*0.5``: an Elman RNN whose recurrent matrix is a random orthogonal matrix times
  0.5 (contracting: every trajectory forgets its start);
- ``rnn W*3``: the same times 3 (chaotic: a positive Lyapunov exponent, nearby
  trajectories separate like ``exp(lyapunov * t)``);
- ``rnn 3I``: recurrent matrix ``3 I + 0.1 N(0, 1)``: the linearisation around the
  initial guess (zeros) multiplies by about 3 per step, but the trajectory saturates into
  stable states (a negative exponent): DEER's first linear solve overflows, ELK's does not;
- ``lstm``: the default LSTM, whose carry is the (h, c) pair.

For each cell it prints the largest Lyapunov exponent along ``recurrax.scan``'s trajectory
(power iteration with ``jax.jvp``), then for every method it reports ``info.iterations``, ``converged``, ``fell_back``,
``lyapunov`` and ``residual`` (``max_iters`` = ``--max-iters``, fallback on), and the wall
time of the compiled call (compile time excluded). ``quasi-deer-block`` differs from
``quasi-deer`` only for a carry of several leaves (the LSTM). Prints a Markdown table and
writes ``benchmarks/results/<YYYY-MM-DD>/<device>-parallel_methods.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import time

import jax
import jax.flatten_util
import jax.numpy as jnp

import recurrax
from benchmarks.parallel import RESULTS, machine

METHODS = ("deer", "quasi-deer", "quasi-deer-block", "elk")
I = 4


def cells(H: int) -> dict:
    def orthogonal(scale):
        return lambda key, shape, dtype: scale * jax.nn.initializers.orthogonal()(key, shape, dtype)

    def near_3i(key, shape, dtype):
        return 3.0 * jnp.eye(shape[0], dtype=dtype) + 0.1 * jax.random.normal(key, shape, dtype)

    return {"rnn W*0.5": recurrax.RNN(H, recurrent_init=orthogonal(0.5)),
            "rnn W*3": recurrax.RNN(H, recurrent_init=orthogonal(3.0)),
            "rnn 3I": recurrax.RNN(H, recurrent_init=near_3i),
            "lstm": recurrax.LSTM(H)}


def lyapunov_of_scan(cell, params, xs) -> float:
    """The largest Lyapunov exponent along ``recurrax.scan``'s trajectory, by power iteration:
    a tangent vector pushed through each step's Jacobian (``jax.jvp``) and renormalised,
    its mean log growth per step (an independent check of ``info.lyapunov``)."""
    flat, unravel = jax.flatten_util.ravel_pytree(cell.initial_carry(()))

    def step(carry, x):
        s, v, total = carry
        f = lambda s: jax.flatten_util.ravel_pytree(cell.apply(params, unravel(s), x)[0])[0]  # noqa: E731
        s, v = jax.jvp(f, (s,), (v,))
        n = jnp.linalg.norm(v)
        return (s, v / n, total + jnp.log(n)), None

    v = jnp.ones_like(flat) / jnp.sqrt(flat.size)
    (_, _, total), _ = jax.lax.scan(step, (flat, v, 0.0), xs)
    return float(total) / xs.shape[0]


def run(T: int, H: int, max_iters: int) -> list:
    xs = jax.random.normal(jax.random.key(1), (T, I))
    rows = []
    for name, cell in cells(H).items():
        params = cell.init(jax.random.key(0), I)
        print(f"{name}: lyapunov along scan's trajectory {lyapunov_of_scan(cell, params, xs):.3f}", flush=True)
        for method in METHODS:
            if method == "quasi-deer-block" and len(jax.tree.leaves(cell.initial_carry(()))) == 1:
                continue  # the same as quasi-deer for a one-leaf carry
            fn = jax.jit(lambda p, x, m=method, c=cell: recurrax.parallel_scan(c, p, x, method=m, max_iters=max_iters))
            t0 = time.perf_counter()
            compiled = fn.lower(params, xs).compile()
            compile_s = time.perf_counter() - t0
            jax.block_until_ready(compiled(params, xs))
            t0 = time.perf_counter()
            _, _, info = jax.block_until_ready(compiled(params, xs))
            row = {"cell": name, "method": method, "iterations": int(info.iterations),
                   "converged": bool(info.converged), "fell_back": bool(info.fell_back),
                   "lyapunov": float(info.lyapunov), "residual": float(info.residual),
                   "ms": 1e3 * (time.perf_counter() - t0), "compile_s": compile_s}
            rows.append(row)
            print(row, flush=True)
    return rows


def table(rows: list) -> str:
    lines = ["| cell | method | iterations | converged | fell back | lyapunov | residual | ms |", "|---" * 8 + "|"]
    for r in rows:
        lines.append(f"| {r['cell']} | {r['method']} | {r['iterations']} | {r['converged']} | {r['fell_back']} | "
                     f"{r['lyapunov']:.3g} | {r['residual']:.1e} | {r['ms']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--T", type=int, default=128, help="sequence length")
    parser.add_argument("--H", type=int, default=8, help="hidden size")
    parser.add_argument("--max-iters", type=int, default=128, help="parallel_scan's max_iters")
    parser.add_argument("--out", help="the directory for the JSON (default: benchmarks/results/<today>)")
    args = parser.parse_args(argv)
    info = machine()
    t0 = time.perf_counter()
    rows = run(args.T, args.H, args.max_iters)
    print("\n" + table(rows) + f"\n\ntotal {time.perf_counter() - t0:.0f} s")
    today = datetime.date.today().isoformat()
    out = args.out or os.path.join(RESULTS, today)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"{info['device']}-parallel_methods.json")
    command = shlex.join(["python", "-m", "benchmarks.parallel_methods", *(sys.argv[1:] if argv is None else argv)])
    with open(path, "w") as f:
        json.dump({"date": today, "command": command, "machine": info, "args": vars(args), "rows": rows}, f, indent=1)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
