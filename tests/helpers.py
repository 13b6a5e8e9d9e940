"""Helpers shared by the tests: the cell zoo and comparison utilities."""

import jax
import jax.numpy as jnp
import numpy as np

from tests.zoo import ZOO

# The built-in cell forms and stacks of them, by name (the battery's zoo has more).
CELLS = {name: ZOO[name] for name in ("rnn", "rnn_relu", "lstm", "gru", "gru_reset_after", "stack", "stack_ra")}


def to_dtype(tree, dtype):
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)


def random_xs(key, T, I, dtype=jnp.float32):
    return jax.random.normal(key, (T, I), dtype)


def leaves_close(a, b, atol, rtol=0.0):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), atol=atol, rtol=rtol)


def scan_trip_counts(jaxpr):
    """The ``length`` of every ``lax.scan`` in ``jaxpr``, nested ones included."""
    counts = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            counts.append(eqn.params["length"])
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    counts += scan_trip_counts(sub)
    return counts


def loss_of(run):
    """A loss of every output and final-carry entry, each through a nonlinearity, for
    ``run(params, xs, carry) -> (final_carry, ys)``."""

    def loss(p, x, c):
        final, ys = run(p, x, c)
        return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(final))

    return loss


def values_and_grads(run, params, xs, carry):
    """``run``'s outputs and the gradients of :func:`loss_of` it, in one compilation."""
    return jax.jit(lambda p, x, c: (run(p, x, c), jax.grad(loss_of(run), argnums=(0, 1, 2))(p, x, c)))(
        params, xs, carry)
