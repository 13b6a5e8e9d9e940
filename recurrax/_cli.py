"""The command line: ``python -m recurrax <command>`` (DESIGN.md 1.7)."""

from __future__ import annotations

import argparse
import time


def _tour(args) -> int:
    """Scan the three cells over a padded random batch and take a gradient."""
    import jax
    import jax.numpy as jnp

    import recurrax

    key = jax.random.key(args.seed)
    B, T, I, H = 4, 12, 3, args.hidden
    xs = jax.random.normal(key, (B, T, I))
    lengths = jnp.array([12, 9, 5, 1])
    print(f"batch of {B} sequences, T={T}, input_size={I}, lengths={lengths.tolist()}, H={H}")
    for name, cell in [("rnn", recurrax.rnn(H)), ("lstm", recurrax.lstm(H)), ("gru", recurrax.gru(H)),
                       ("gru(reset_after)", recurrax.gru(H, reset_after=True))]:
        params = cell.init(key, I)

        def loss(p):
            _, ys = jax.vmap(lambda x, n: recurrax.scan(cell, p, x, length=n))(xs, lengths)
            return jnp.mean(ys**2)

        t0 = time.perf_counter()
        value, grads = jax.jit(jax.value_and_grad(loss))(params)
        norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads)))
        print(f"  {name:17s} loss {float(value):.5f}  |grad| {float(norm):.5f}  "
              f"({time.perf_counter() - t0:.2f} s incl. compile)")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recurrax", description="recurrax command line.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the main job: a short tour of the cells on random data")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--hidden", type=int, default=16)
    demo.set_defaults(run=_tour)
    args = parser.parse_args(argv)
    return args.run(args)
