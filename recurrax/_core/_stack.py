"""``Stack``: several cells as one multi-layer cell, with every capability its layers have."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from recurrax._core import _validate
from recurrax._core._base import (
    Array,
    HandBackward,
    JacobianDiagonal,
    PRNGKey,
    SplitForm,
    Stochastic,
    offered_unless,
    output_size,
)
from recurrax._core._validate import check_cell, preferred_projection


def _without_noise(stack) -> str | None:
    """``declines`` for the stochastic capability: no layer draws noise."""
    return None if any(isinstance(c, Stochastic) for c in stack.cells) else "no layer is Stochastic"


def _lacking(protocol, first_only=False):
    """``declines`` for :func:`offered_unless`: the layers without ``protocol``, if any."""

    def declines(stack) -> str | None:
        cells = stack.cells[:1] if first_only else stack.cells
        missing = [f"layer {k} ({cell!r})" for k, cell in enumerate(cells) if not isinstance(cell, protocol)]
        return f"{', '.join(missing)} has no {protocol.__name__}" if missing else None

    return declines


@dataclasses.dataclass(frozen=True, repr=False, init=False)
class Stack:
    """A multi-layer cell: layer ``k``'s output is layer ``k+1``'s input within each step.

    Its params and carry are tuples with one entry per layer, and its output is the top
    layer's output. It has the split form when layer 0 has it (layer 0's ``project``),
    and the hand-derived backward and the Jacobian diagonal exactly when every layer has
    them (``isinstance(stack, recurrax.HandBackward)`` says so).

    Use ``Stack`` when the layers should advance together inside one step (one carry, one
    ``scan``, any cell API such as ``parallel_scan``); use :class:`recurrax.Deep` for
    layers that each run over the whole sequence (bidirectional layers, ``torch.nn.LSTM``'s
    ``num_layers``). For unidirectional layers both give the same numbers.

    Args:
      *cells: one or more cells, bottom first (any objects with the cell methods).

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> cell = recurrax.Stack(recurrax.LSTM(8), recurrax.GRU(4))
      >>> params = cell.init(jax.random.key(0), 3)
      >>> carry, y = cell.apply(params, cell.initial_carry(), jnp.ones(3))
      >>> [p.U.shape for p in params], y.shape
      ([(3, 32), (8, 12)], (4,))
      >>> isinstance(cell, recurrax.HandBackward), isinstance(recurrax.Stack(recurrax.MinGRU(4)), recurrax.HandBackward)
      (True, False)
    """

    cells: tuple

    def __init__(self, *cells: Any):
        if not cells:
            raise ValueError("Stack needs at least one cell; got none.")
        for i, cell in enumerate(cells):
            check_cell(cell, f"Stack's argument {i}")
        object.__setattr__(self, "cells", tuple(cells))

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

    @offered_unless(_lacking(SplitForm, first_only=True))
    def project(self, params: tuple, xs: Array):
        """Layer 0's ``project``."""
        self._check(params)
        return self.cells[0].project(params[0], xs)

    @offered_unless(_lacking(SplitForm, first_only=True))
    def step(self, params: tuple, carry: tuple, xp: Any):
        """Layer 0's ``step`` on ``xp``, then each layer above's ``apply``."""
        return self._chain(params, carry, xp, self.cells[0].step)

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

    @offered_unless(_lacking(HandBackward))
    def step_fwd(self, params, carry, xp):
        self._check(params, carry)
        new, res, inputs = [], [], []
        for k, (cell, p, c) in enumerate(zip(self.cells, params, carry)):
            if k:
                inputs.append(xp)
                xp = _validate.project(cell, p, xp)
            (c, xp), r = cell.step_fwd(p, c, xp)
            new.append(c)
            res.append(r)
        return (tuple(new), xp), (tuple(res), tuple(inputs))

    @offered_unless(_lacking(HandBackward))
    def step_bwd(self, params, res, carry_bar, y_bar):
        layer_res, inputs = res
        prev, ds = [None] * len(self.cells), [None] * len(self.cells)
        g = y_bar  # the top layer's output is the stack's output
        for k in reversed(range(len(self.cells))):
            cell = self.cells[k]
            prev[k], ds[k] = cell.step_bwd(params[k], layer_res[k], carry_bar[k], g)
            if k:  # layer k's input is layer k-1's output: its cotangent through layer k's project
                xp_bar = cell.step_bwd_params(params[k], layer_res[k], ds[k])[1]
                g = jax.vjp(lambda x: _validate.project(cell, params[k], x), inputs[k - 1])[1](xp_bar)[0]
        return tuple(prev), tuple(ds)

    @offered_unless(_lacking(HandBackward))
    def step_bwd_params(self, params, res, ds):
        layer_res, inputs = res
        bars, xp_bar0 = [], None
        for k, (cell, p, r, d) in enumerate(zip(self.cells, params, layer_res, ds)):
            p_bar, xp_bar = cell.step_bwd_params(p, r, d)
            if k == 0:
                xp_bar0 = xp_bar
            else:  # layer k's own projection, over all steps at once
                proj_bar = jax.vjp(lambda p: _validate.project(cell, p, inputs[k - 1]), p)[1](xp_bar)[0]
                p_bar = jax.tree.map(jnp.add, p_bar, proj_bar)
            bars.append(p_bar)
        return tuple(bars), xp_bar0

    @offered_unless(_lacking(JacobianDiagonal))
    def step_jacobian_diagonal(self, params, carry, xp):
        # Layer k's input depends on the layers below (off-diagonal blocks), so the diagonal
        # of the stack's Jacobian is each layer's own diagonal.
        self._check(params, carry)
        new, diag = [], []
        for k, (cell, p, c) in enumerate(zip(self.cells, params, carry)):
            xk = xp if k == 0 else _validate.project(cell, p, xp)
            (c, xp), d = cell.step_jacobian_diagonal(p, c, xk)
            new.append(c)
            diag.append(d)
        return (tuple(new), xp), tuple(diag)

    # -- noise: each stochastic layer's, with its own key ---------------------------------

    @offered_unless(_without_noise)
    def sample_noise(self, key, params, xs):
        """Layer ``k``'s noise drawn with ``fold_in(key, k)`` for its inputs (``None`` for a
        layer without noise), as tuples ``(sequence_noise, step_noise)``."""
        self._check(params)
        sequence, steps = [], []
        for k, (cell, p) in enumerate(zip(self.cells, params)):
            noise = cell.sample_noise(jax.random.fold_in(key, k), p, xs) if isinstance(cell, Stochastic) else None
            sequence.append(None if noise is None else noise[0])
            steps.append(None if noise is None else noise[1])
            # layer k+1 reads layer k's outputs: only their shape and dtype matter here
            xs = jnp.zeros((xs.shape[0], output_size(cell, p, xs.shape[-1])), xs.dtype)
        return tuple(sequence), tuple(steps)

    @offered_unless(_without_noise)
    def with_noise(self, sequence_noise, step_noise):
        """The stack of its layers with their noise held (see :class:`recurrax.Stochastic`)."""
        steps = (None,) * len(self.cells) if step_noise is None else step_noise
        return Stack(*(cell.with_noise(s, n) if isinstance(cell, Stochastic) else cell
                       for cell, s, n in zip(self.cells, sequence_noise, steps)))

    def _check(self, params, *carry):
        # carry is checked only where it is passed: project() has none, but params=None is an error
        n = len(self.cells)
        for name, value in (("params", params), *(("carry", c) for c in carry)):
            _validate.check_entries(name, value, n, f"a stack of {n} cells", "cell")
