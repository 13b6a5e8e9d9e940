"""On a GPU: the LSTM layers' ``impl="cudnn"`` against ``impl="scan"`` (values, final carries,
gradients), float32, with padding and a zero length. Prints the largest differences and
exits 1 if any exceeds its tolerance. ``tests/test_cudnn.py`` checks the same wrapper on CPU
against JAX's pure-JAX reference of the kernel.

    python benchmarks/cudnn_check.py
"""

import sys

import jax
import jax.numpy as jnp

import recurrax

T, B, I, H = 50, 16, 32, 64
TOL = 1e-4  # float32 over 50 steps, cuDNN's own accumulation order


def main() -> int:
    xs = jax.random.normal(jax.random.key(0), (T, B, I))
    length = jnp.arange(B) * (T // B)  # includes 0
    xs = jnp.where((jnp.arange(T)[:, None] < length[None, :])[..., None], xs, jnp.nan)
    worst = 0.0
    for name, make in [("forward", recurrax.Unidirectional),
                       ("reverse", lambda c, impl: recurrax.Unidirectional(c, reverse=True, impl=impl)),
                       ("bidirectional", recurrax.Bidirectional)]:
        fast, slow = make(recurrax.LSTM(H), impl="cudnn"), make(recurrax.LSTM(H), impl="scan")
        params = slow.init(jax.random.key(1), I)

        def loss(layer):
            return lambda p, x: sum(jnp.sum(jnp.sin(a)) for a in jax.tree.leaves(layer.apply(p, x, length=length)))

        outs = [jax.jit(lambda p, x, lay=lay: lay.apply(p, x, length=length))(params, xs) for lay in (fast, slow)]
        grads = [jax.jit(jax.grad(loss(lay), argnums=(0, 1)))(params, xs) for lay in (fast, slow)]
        d_val = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(*map(jax.tree.leaves, outs)))
        d_grad = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(*map(jax.tree.leaves, grads)))
        finite = all(bool(jnp.isfinite(a).all()) for a in jax.tree.leaves(grads[0]))
        print(f"cudnn vs scan, {name:13s}: values {d_val:.2e}, gradients {d_grad:.2e}, finite {finite}")
        worst = max(worst, d_val, d_grad, 0.0 if finite else float("inf"))
    print("OK" if worst <= TOL else f"FAILED: {worst:.2e} > {TOL:.0e}")
    return 0 if worst <= TOL else 1


if __name__ == "__main__":
    sys.exit(main())
