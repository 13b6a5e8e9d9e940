"""The A/B measurements behind recurrax's CPU fast paths (benchmarks/HISTORY.md, "What was tried, measured").

    python benchmarks/ablations.py [--reps 7]

Each group times its variants in one process, interleaved (round-robin, median of the
rounds), on the main configuration (B=32, T=128, I=64, H=256, float32) unless it says
otherwise. Hand-written loops stand for code paths recurrax no longer has (e.g. the
logistic gates); the others call recurrax with its options.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from jax import lax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import recurrax  # noqa: E402

B, T, I, H = 32, 128, 64, 256
KEYS = jax.random.split(jax.random.key(0), 4)
U = 0.05 * jax.random.normal(KEYS[0], (I, 4 * H))
W = 0.05 * jax.random.normal(KEYS[1], (H, 4 * H))
BIAS = 0.1 * jax.random.normal(KEYS[2], (4 * H,))
XS_TM = jax.random.normal(KEYS[3], (T, B, I))  # time-major
XS_BM = jnp.swapaxes(XS_TM, 0, 1)  # batch-major, as users vmap
HALF = jnp.concatenate([jnp.full(2 * H, 0.5), jnp.ones(H), jnp.full(H, 0.5)])


def interleaved(variants: dict, reps: int) -> dict:
    """``{name: thunk}`` -> ``{name: median ms}``; each thunk runs a compiled function."""
    for f in variants.values():
        f(), f()
    times = {n: [] for n in variants}
    for _ in range(reps):
        for n, f in variants.items():
            t0 = time.perf_counter()
            f()
            times[n].append(1e3 * (time.perf_counter() - t0))
    return {n: statistics.median(t) for n, t in times.items()}


def run(f, *args):
    f = jax.jit(f)
    return lambda: jax.block_until_ready(f(*args))


def lstm_loop(gates, bias_in_loop=True, project=True):
    """A bare time-major LSTM loop with the given gate function ``gates(a, c) -> (h, c)``."""

    def f(xs):
        xu = xs @ U if project else xs
        if not bias_in_loop:
            xu = xu + BIAS

        def body(hc, z):
            h, c = hc
            a = z + h @ W
            h, c = gates(a + BIAS if bias_in_loop else a, c)
            return (h, c), h

        return lax.scan(body, (jnp.zeros((B, H)),) * 2, xu)[1]

    return f


def sliced(sig):
    def gates(a, c):
        i, f, g, o = jnp.split(a, 4, -1)
        c = sig(f) * c + sig(i) * jnp.tanh(g)
        return sig(o) * jnp.tanh(c), c

    return gates


def one_tanh(a, c):  # as recurrax's LSTM does it: one multiply per step, fused into the tanh
    i, f, g, o = jnp.split(jnp.tanh(a * HALF), 4, -1)
    c = (0.5 * f + 0.5) * c + (0.5 * i + 0.5) * g
    return (0.5 * o + 0.5) * jnp.tanh(c), c


def tanh_sigmoid(x):
    return 0.5 * jnp.tanh(0.5 * x) + 0.5


def _ys(cell, p, xs, batch_major, **options):
    """recurrax's outputs for ``xs``: ``jax.vmap`` over examples ``[B, T, I]`` (``batch_major``)
    or the time-major batch form ``[T, B, I]``."""
    if batch_major:
        return jax.vmap(lambda x: recurrax.scan(cell, p, x, **options)[1])(xs)
    return recurrax.scan(cell, p, xs, **options)[1]


def recurrax_grad(cell, batch_major=False, xs=None, **options):
    params = cell.init(jax.random.key(1), I)
    xs = (XS_BM if batch_major else XS_TM) if xs is None else xs
    loss = lambda p, x: jnp.mean(_ys(cell, p, x, batch_major, **options))  # noqa: E731
    return run(jax.grad(loss, argnums=(0, 1)), params, xs)


def recurrax_fwd(cell, batch_major=False, xs=None, **options):
    params = cell.init(jax.random.key(1), I)
    xs = (XS_BM if batch_major else XS_TM) if xs is None else xs
    return run(lambda p, x: _ys(cell, p, x, batch_major, **options), params, xs)


def placement_groups():
    """``scan(..., projection="before" | "in_loop")`` per cell and batch size, batch form."""
    cells = {"RNN": recurrax.RNN(H), "LSTM": recurrax.LSTM(H), "GRU": recurrax.GRU(H),
             "GRU reset-after": recurrax.GRU(H, reset_after=True)}
    for batch in (1, 8, B, 256):
        xs = jax.random.normal(KEYS[3], (T, batch, I))
        variants = {}
        for name, cell in cells.items():
            for where in ("before", "in_loop"):
                variants[f"{name} fwd, {where}"] = recurrax_fwd(cell, xs=xs, projection=where)
                variants[f"{name} fwd+bwd, {where}"] = recurrax_grad(cell, xs=xs, projection=where)
        yield f"input projection before the loop or in it, B={batch} (batch form, default checkpoint)", variants


def groups(reps):
    lstm, gru_ra = recurrax.LSTM(H), recurrax.GRU(H, reset_after=True)
    Z = XS_TM @ U  # a projected input for the gates-only loops
    yield "LSTM gates only, no matmul (loop over [T, B, 4H])", {
        "logistic (jax.nn.sigmoid)": run(lambda z: lax.scan(
            lambda hc, a: (lambda h, c: ((h, c), h))(*sliced(jax.nn.sigmoid)(a + hc[0][:, :1], hc[1])),
            (jnp.zeros((B, H)),) * 2, z)[1], Z),
        "sigmoid as tanh": run(lambda z: lax.scan(
            lambda hc, a: (lambda h, c: ((h, c), h))(*sliced(tanh_sigmoid)(a + hc[0][:, :1], hc[1])),
            (jnp.zeros((B, H)),) * 2, z)[1], Z),
        "one tanh over the 4H gates": run(lambda z: lax.scan(
            lambda hc, a: (lambda h, c: ((h, c), h))(*one_tanh(a + hc[0][:, :1], hc[1])),
            (jnp.zeros((B, H)),) * 2, z)[1], Z),
    }
    yield "LSTM loop with the matmul, time-major, forward", {
        "sliced logistic gates": run(lstm_loop(sliced(jax.nn.sigmoid)), XS_TM),
        "sliced tanh-sigmoid gates": run(lstm_loop(sliced(tanh_sigmoid)), XS_TM),
        "one tanh": run(lstm_loop(one_tanh), XS_TM),
        "one tanh, bias added to the [T,B,4H] projection": run(lstm_loop(one_tanh, bias_in_loop=False), XS_TM),
        "one tanh, the 4 gate matmuls split (flax-style)": run(lambda xs: lax.scan(
            lambda hc, z: (lambda h, c: ((h, c), h))(*one_tanh(
                z + jnp.concatenate([hc[0] @ W[:, k * H:(k + 1) * H] for k in range(4)], -1) + BIAS, hc[1])),
            (jnp.zeros((B, H)),) * 2, XS_TM @ U)[1], XS_TM),
        "the matmul h @ W alone (plus a tanh of H columns)": run(lambda xs: lax.scan(
            lambda h, z: (jnp.tanh(z + h @ W)[:, :H],) * 2, jnp.zeros((B, H)), xs @ U)[1], XS_TM),
        "one tanh, projection inside the loop": run(lambda xs: lax.scan(
            lambda hc, x: (lambda h, c: ((h, c), h))(*one_tanh(x @ U + hc[0] @ W + BIAS, hc[1])),
            (jnp.zeros((B, H)),) * 2, xs)[1], XS_TM),
    }
    yield "recurrax LSTM forward: the time-major batch form or vmap over examples", {
        "batch form [T, B, I]": recurrax_fwd(lstm),
        "jax.vmap over [B, T, I]": recurrax_fwd(lstm, batch_major=True),
    }
    yield from placement_groups()
    for name, cell in (("LSTM", lstm), ("GRU reset-after", gru_ra)):
        yield f"recurrax {name} forward+backward under vmap: checkpoint policy", {
            f"checkpoint={c!r}": recurrax_grad(cell, checkpoint=c) for c in ("dots", "carry", None)}
        yield f"recurrax {name} forward / forward+backward: unroll", {
            **{f"fwd unroll={u}": recurrax_fwd(cell, unroll=u) for u in (1, 2, 4, 8)},
            **{f"fwd+bwd unroll={u}": recurrax_grad(cell, unroll=u) for u in (1, 2, 4, 8)}}
    for name, cell in (("LSTM", lstm), ("GRU reset-after", gru_ra)):
        yield f"recurrax {name} forward+backward: hand-written backward or autodiff", {
            "autodiff, batch form": recurrax_grad(cell),
            "backward='manual', batch form (one weight-gradient contraction)": recurrax_grad(cell, backward="manual"),
            "autodiff, vmap": recurrax_grad(cell, batch_major=True),
            "backward='manual', vmap (per-example weight gradients)": recurrax_grad(cell, batch_major=True,
                                                                                    backward="manual"),
        }
    hs, das = jax.random.normal(KEYS[0], (T, B, H)), jax.random.normal(KEYS[1], (T, B, 4 * H))
    yield "weight-gradient sums (the cost behind the two backward passes)", {
        "dW += h_t^T da_t inside a loop": run(lambda h, d: lax.scan(
            lambda acc, a: (acc + a[0].T @ a[1], None), jnp.zeros((H, 4 * H)), (h, d))[0], hs, das),
        "dW += hT_t da_t inside a loop, h_t stored transposed ([H, B], a plain matmul)": run(lambda h, d: lax.scan(
            lambda acc, a: (acc + a[0] @ a[1], None), jnp.zeros((H, 4 * H)), (h, d))[0], jnp.swapaxes(hs, 1, 2), das),
        "one einsum over all steps": run(lambda h, d: jnp.einsum("tbi,tbj->ij", h, d), hs, das),
        "per example [B,H,4H], then sum(0) (what vmap makes of it)": run(
            lambda h, d: jnp.einsum("tbi,tbj->bij", h, d).sum(0), hs, das),
    }


def memory_table():
    cell, Tm = recurrax.LSTM(H), 1024
    params = cell.init(jax.random.key(1), I)
    xs = jax.random.normal(KEYS[3], (Tm, B, I))
    rows = []
    for c in (None, "dots", "carry"):
        loss = lambda p, x, c=c: jnp.mean(recurrax.scan(cell, p, x, checkpoint=c)[1])  # noqa: E731
        m = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, xs).compile().memory_analysis()
        rows.append(f"| checkpoint={c!r} | {m.temp_size_in_bytes / 2**20:.0f} |")
    carries = 2 * B * Tm * H * 4 / 2**20
    params_mb = sum(a.size * 4 for a in jax.tree.leaves(params)) / 2**20
    return "\n".join([f"LSTM fwd+bwd temporary memory, B={B} T={Tm} H={H} (params {params_mb:.2f} MB, "
                      f"carries (h, c) {carries:.0f} MB)", "", "| option | MB |", "|---|---|", *rows])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--only", help="run only the groups whose title contains this text")
    args = parser.parse_args(argv)
    for title, variants in groups(args.reps):
        if args.only and args.only not in title:
            continue
        print(f"\n{title}\n\n| variant | ms |\n|---|---|", flush=True)
        for name, ms in interleaved(variants, args.reps).items():
            print(f"| {name} | {ms:.1f} |", flush=True)
    print("\n" + memory_table())


if __name__ == "__main__":
    main()
