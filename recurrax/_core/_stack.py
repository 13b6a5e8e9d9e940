"""``stack``: several cells as one multi-layer cell, with every capability its layers have."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from recurrax._core._base import Array, PRNGKey
from recurrax._core import _validate
from recurrax._core._validate import check_cell, preferred_projection, require, split_form


def output_size(cell: Any, params: Any, input_size: int) -> int:
    """The size of ``y`` that ``cell`` produces from inputs of ``input_size`` features."""
    dtype = jax.tree.leaves(params)[0].dtype if jax.tree.leaves(params) else jnp.float32
    x = jax.ShapeDtypeStruct((input_size,), dtype)
    _, y = jax.eval_shape(lambda p, x: cell.apply(p, cell.initial_carry((), dtype), x), params, x)
    return y.shape[-1]


@dataclasses.dataclass(frozen=True, repr=False)
class Stack:
    """Layers interleaved within a step: layer ``k``'s output is layer ``k+1``'s input.

    A cell whose params and carry are tuples, one entry per layer, and whose output is
    the top layer's. It has the split form (layer 0's ``project``, or none), and the
    hand-derived backward and Jacobian diagonal when every layer has them. Build it
    with :func:`stack`.
    """

    cells: tuple

    def __repr__(self):
        return f"Stack({', '.join(map(repr, self.cells))})"

    def preferred_projection(self, batch_shape: tuple) -> str:
        """Layer 0's (the layer that reads ``xs``)."""
        return preferred_projection(self.cells[0], batch_shape)

    def init(self, key: PRNGKey, input_size: int) -> tuple:
        params = []
        for cell, k in zip(self.cells, jax.random.split(key, len(self.cells))):
            params.append(cell.init(k, input_size))
            input_size = output_size(cell, params[-1], input_size)
        return tuple(params)

    def initial_carry(self, batch_shape: tuple = (), dtype: Any = jnp.float32) -> tuple:
        return tuple(cell.initial_carry(batch_shape, dtype) for cell in self.cells)

    def apply(self, params: tuple, carry: tuple, x: Array):
        return self._chain(params, carry, x, self.cells[0].apply)

    def project(self, params: tuple, xs: Array):
        self._check(params)
        return _validate.project(self.cells[0], params[0], xs)

    def step(self, params: tuple, carry: tuple, xp: Any):
        return self._chain(params, carry, xp, split_form(self.cells[0])[1])

    def _chain(self, params, carry, x, first):
        """Layer 0 runs ``first`` on ``x``; each layer above runs its one-step ``apply`` on
        the output of the layer below."""
        self._check(params, carry)
        new = []
        for k, (cell, p, c) in enumerate(zip(self.cells, params, carry)):
            c, x = (cell.apply if k else first)(p, c, x)
            new.append(c)
        return tuple(new), x

    # -- the hand-derived backward: each layer's, chained through the layer inputs -------

    def step_fwd(self, params, carry, xp):
        self._check(params, carry)
        new, res, inputs = [], [], []
        for k, (cell, p, c) in enumerate(zip(self.cells, params, carry)):
            if k:
                inputs.append(xp)
                xp = _validate.project(cell, p, xp)
            (c, xp), r = require(cell, "step_fwd", f"stack layer {k}")(p, c, xp)
            new.append(c)
            res.append(r)
        return (tuple(new), xp), (tuple(res), tuple(inputs))

    def step_bwd(self, params, res, carry_bar, y_bar):
        layer_res, inputs = res
        prev, ds = [None] * len(self.cells), [None] * len(self.cells)
        g = y_bar  # the top layer's output is the stack's output
        for k in reversed(range(len(self.cells))):
            cell = self.cells[k]
            prev[k], ds[k] = require(cell, "step_bwd", f"stack layer {k}")(params[k], layer_res[k], carry_bar[k], g)
            if k:  # layer k's input is layer k-1's output: its cotangent through layer k's project
                xp_bar = cell.step_bwd_params(params[k], layer_res[k], ds[k])[1]
                g = jax.vjp(lambda x: _validate.project(cell, params[k], x), inputs[k - 1])[1](xp_bar)[0]
        return tuple(prev), tuple(ds)

    def step_bwd_params(self, params, res, ds):
        layer_res, inputs = res
        bars, xp_bar0 = [], None
        for k, (cell, p, r, d) in enumerate(zip(self.cells, params, layer_res, ds)):
            p_bar, xp_bar = require(cell, "step_bwd_params", f"stack layer {k}")(p, r, d)
            if k == 0:
                xp_bar0 = xp_bar
            else:  # layer k's own projection, over all steps at once
                proj_bar = jax.vjp(lambda p: _validate.project(cell, p, inputs[k - 1]), p)[1](xp_bar)[0]
                p_bar = jax.tree.map(jnp.add, p_bar, proj_bar)
            bars.append(p_bar)
        return tuple(bars), xp_bar0

    def step_jacobian_diagonal(self, params, carry, xp):
        # Layer k's input depends on the layers below (off-diagonal blocks), so the diagonal
        # of the stack's Jacobian is each layer's own diagonal.
        self._check(params, carry)
        new, diag = [], []
        for k, (cell, p, c) in enumerate(zip(self.cells, params, carry)):
            xk = xp if k == 0 else _validate.project(cell, p, xp)
            (c, xp), d = require(cell, "step_jacobian_diagonal", f"stack layer {k}")(p, c, xk)
            new.append(c)
            diag.append(d)
        return (tuple(new), xp), tuple(diag)

    def _check(self, params, *carry):
        # carry is checked only where it is passed: project() has none, but params=None is an error
        n = len(self.cells)
        for name, value in (("params", params), *(("carry", c) for c in carry)):
            _validate.check_entries(name, value, n, f"a stack of {n} cells", "cell")


def stack(*cells: Any) -> Stack:
    """A multi-layer cell: layer ``k``'s output is layer ``k+1``'s input within each step.

    Args:
      *cells: one or more cells, bottom first (any objects with the cell methods).

    Returns:
      A :class:`Stack` whose params and carry are tuples with one entry per layer and
      whose output is the top layer's output.

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> cell = recurrax.stack(recurrax.lstm(8), recurrax.gru(4))
      >>> params = cell.init(jax.random.key(0), 3)
      >>> carry, y = cell.apply(params, cell.initial_carry(), jnp.ones(3))
      >>> [p.U.shape for p in params], y.shape
      ([(3, 32), (8, 12)], (4,))
    """
    if not cells:
        raise ValueError("stack needs at least one cell; got none.")
    for i, cell in enumerate(cells):
        check_cell(cell, f"stack's argument {i}")
    return Stack(tuple(cells))
