"""Gradient-flow diagnostics: how much of dL/ds_T reaches each earlier state.

The chain ``ds_T/ds_k = prod_{j=k+1..T} ds_j/ds_{j-1}``: for the RNN each factor is
``diag(1 - s_j^2) W^T``, so with ``||W|| < 1`` the gradient vanishes geometrically in the
lag ``T - k`` and with a spectral radius above 1 (and unsaturated tanh) it explodes. The
LSTM's cell state adds a path ``dc_j/dc_{j-1} = diag(f_j)``, near the identity when the
forget gates are near 1, and the GRU's ``h_j = (1 - z_j) h_{j-1} + ...`` does the same for
``z`` near 0: the gradient stays alive over long lags.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from recurrax._core._base import Array, Params
from recurrax._core._validate import check_carry, check_cell, check_xs


def _default_loss(final_carry):
    return jnp.sum(jax.tree.leaves(final_carry)[0])


def gradient_norms(
    cell: Any,
    params: Params,
    xs: Array,
    carry: Any = None,
    *,
    loss: Callable[[Any], Array] | None = None,
) -> Array:
    """``||dL/ds_t||`` for the state after every step ``t``, with ``L`` a loss of the final state.

    ``s_t`` is the whole carry after step ``t`` (for the LSTM both ``h_t`` and ``c_t``; the
    norm is taken over all of it). The value at index ``t`` is the gradient that flows back
    over the lag ``T - 1 - t``: it is found by adding a zero perturbation ``delta_t`` to the
    carry after each step and differentiating with respect to it, which works for any cell.

    Args:
      cell, params, xs, carry: as in :func:`recurrax.scan` (no padding).
      loss: ``loss(final_carry) -> scalar``; ``None`` means the sum of the first carry leaf
        (``h_T``, the last output, for the built-in cells).

    Returns:
      ``[T]``: ``norms[t] = ||dL/ds_t||``; ``norms[-1]`` is the loss's own gradient.

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> cell = recurrax.RNN(8)
      >>> params = cell.init(jax.random.key(0), 1)
      >>> params = params._replace(W=0.5 * jnp.eye(8), b=jnp.zeros(8))
      >>> norms = recurrax.gradient_norms(cell, params, jnp.zeros((5, 1)))
      >>> [round(float(r), 3) for r in norms / norms[-1]]  # 0.5 ** lag
      [0.062, 0.125, 0.25, 0.5, 1.0]
    """
    check_cell(cell)
    xs = check_xs(xs)
    if xs.shape[0] == 0:
        raise ValueError("gradient_norms needs at least one step: xs is [0, ...]; the norms are per step.")
    batch = tuple(xs.shape[1:-1])
    carry = cell.initial_carry(batch, xs.dtype) if carry is None else check_carry(cell, carry, batch, xs.dtype)
    loss = _default_loss if loss is None else loss
    T = xs.shape[0]

    def total(deltas):
        def body(c, inputs):
            x, d = inputs
            c, _ = cell.apply(params, c, x)
            return jax.tree.map(jnp.add, c, d), None

        final, _ = lax.scan(body, carry, (xs, deltas))
        return loss(final)

    zeros = jax.tree.map(lambda c: jnp.zeros((T, *c.shape), c.dtype), carry)
    grads = jax.grad(total)(zeros)
    return jnp.sqrt(sum(jnp.sum(g.reshape(T, -1) ** 2, axis=1) for g in jax.tree.leaves(grads)))
