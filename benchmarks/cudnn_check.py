"""On a GPU: the LSTM layers' ``impl="cudnn"`` against ``impl="scan"`` (values, final carries,
gradients), float32, with padding and a zero length, for each cuDNN ``precision``. Prints the
largest differences and exits 1 if any exceeds its tolerance. ``tests/test_cudnn.py`` checks
the same wrapper on CPU against JAX's pure-JAX reference of the kernel.

The reference is ``scan`` with float32 matrix products (``jax.default_matmul_precision
("highest")``: on GPUs with tensor cores JAX's default may use TF32 for ``scan`` too).
Differences are relative to each leaf's largest entry (at least 1).

    python benchmarks/cudnn_check.py
"""

import sys

import jax
import jax.numpy as jnp

import recurrax

T, B, I, H = 50, 16, 32, 64
# Per precision: float32 products (cuDNN's own accumulation order, over 50 steps), or TF32
# tensor cores, which round the products' inputs to 10 mantissa bits (2**-11 = 4.9e-4 each).
TOL = {"highest": 1e-4, "tensorfloat32": 2e-2}


def relative_difference(a, b) -> float:
    return max(float(jnp.max(jnp.abs(x - y)) / jnp.maximum(1.0, jnp.max(jnp.abs(y))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main() -> int:
    xs = jax.random.normal(jax.random.key(0), (T, B, I))
    length = jnp.arange(B) * (T // B)  # includes 0
    xs = jnp.where((jnp.arange(T)[:, None] < length[None, :])[..., None], xs, jnp.nan)
    failed = []
    for precision, tol in TOL.items():
        for name, make in [("forward", recurrax.Unidirectional),
                           ("reverse", lambda c, **kw: recurrax.Unidirectional(c, reverse=True, **kw)),
                           ("bidirectional", recurrax.Bidirectional)]:
            fast, slow = make(recurrax.LSTM(H), impl="cudnn", precision=precision), make(recurrax.LSTM(H))
            params = slow.init(jax.random.key(1), I)

            def loss(layer):
                return lambda p, x: sum(jnp.sum(jnp.sin(a)) for a in jax.tree.leaves(layer.apply(p, x, length=length)))

            with jax.default_matmul_precision("highest"):  # the reference: float32 products
                outs = [jax.jit(lambda p, x, lay=lay: lay.apply(p, x, length=length))(params, xs)
                        for lay in (fast, slow)]
                grads = [jax.jit(jax.grad(loss(lay), argnums=(0, 1)))(params, xs) for lay in (fast, slow)]
            d_val, d_grad = relative_difference(*outs), relative_difference(*grads)
            finite = all(bool(jnp.isfinite(a).all()) for a in jax.tree.leaves(grads[0]))
            ok = finite and max(d_val, d_grad) <= tol
            print(f"cudnn ({precision:13s}) vs scan, {name:13s}: values {d_val:.2e}, gradients {d_grad:.2e}, "
                  f"finite {finite}, tol {tol:.0e}: {'ok' if ok else 'FAILED'}")
            if not ok:
                failed.append(f"{precision}/{name}")
    print("OK" if not failed else f"FAILED: {', '.join(failed)}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
