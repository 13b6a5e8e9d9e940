"""Backpropagation through time, derived by hand (DESIGN.md 1.4; derivations in docs/bptt.md).

The lecture writes the gradient of a loss ``L`` with respect to a shared weight as a sum
over time steps,

    dL/dW = sum_k dL/ds_T * ds_T/ds_k * ds_k/dW,

where ``ds_k/dW`` is the *immediate* derivative (step ``k`` only). :func:`manual_bptt`
computes exactly this, in two parts:

1. A reverse ``lax.scan`` carries ``dL/ds_t`` (for the LSTM also ``dL/dc_t``) from the
   last step to the first. At step ``t`` it adds ``dL/dy_t`` to the state's cotangent,
   pushes it through the step's hand-derived local Jacobian to get the cotangent of the
   gate pre-activations ``a_t`` (the per-cell ``_*_step`` functions below), and from those
   ``dL/ds_{t-1} = da_t W^T`` (plus the direct paths the gates leave). That product of
   local Jacobians is the lecture's ``ds_T/ds_k`` chain.
2. The sum over ``k`` of ``ds_k/dW`` is then one matrix product over all steps at once:
   ``dL/dW = sum_t s_{t-1}^T da_t = S_prev^T A`` (and ``dL/dU = X^T A``,
   ``dL/db = sum_t da_t``, ``dL/dx_t = da_t U^T``), outside the loop.

No ``jax.grad``/``jax.vjp`` is used here; the tests check the result against
``jax.vjp(recurrax.scan)`` to 1e-10 in float64.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from recurrax._base import Array, Cell, Params
from recurrax._cells import (
    CellParams,
    GRUResetAfterParams,
    LSTMCarry,
    _GRUSpec,
    _LSTMSpec,
    _RNNSpec,
    _Spec,
    _StackSpec,
    prepare,
    spec_of,
    step,
)
from recurrax._scan import check_carry, check_xs, mask_padding

# Derivatives of the supported activations, written in terms of their OUTPUT y = f(a):
# that is what the forward pass keeps, so the backward pass needs no pre-activations.
_DERIVATIVES = {
    jnp.tanh: lambda y: 1 - y * y,
    jax.nn.sigmoid: lambda y: y * (1 - y),
    jax.nn.relu: lambda y: (y > 0).astype(y.dtype),
}


def _dact(spec: _Spec, which: str):
    fn = getattr(spec, which)
    try:
        return _DERIVATIVES[fn]
    except KeyError:
        raise NotImplementedError(
            f"manual_bptt has no hand-derived derivative for {which}={getattr(fn, '__name__', fn)} "
            f"of this {spec.name} cell (supported: tanh, sigmoid, relu); use jax.vjp instead."
        ) from None


def _check_supported(cell: Cell):
    spec = spec_of(cell)
    if isinstance(spec, _StackSpec):
        for sub in spec.cells:
            _check_supported(sub)
        return spec
    if not isinstance(spec, _Spec):
        raise NotImplementedError(
            f"manual_bptt cannot differentiate {cell!r} by hand: it knows the built-in rnn, "
            f"lstm and gru cells and stacks of them. Use jax.vjp of recurrax.scan instead."
        )
    if spec.dtype is not None:
        raise NotImplementedError(
            f"manual_bptt differentiates cells that compute in their inputs' dtype; this "
            f"{spec.name} cell has dtype={jnp.dtype(spec.dtype).name}. Use jax.vjp instead."
        )
    _dact(spec, "activation")
    if not isinstance(spec, _RNNSpec):
        _dact(spec, "gate_activation")
    return spec


def _sum_outer(a: Array, b: Array) -> Array:
    """``sum_t a_t^T b_t`` over every leading axis: ``[..., m], [..., n] -> [m, n]``."""
    return jnp.einsum("...i,...j->ij", a, b)


def _sum_rows(a: Array) -> Array:
    return a.reshape(-1, a.shape[-1]).sum(0)


# -- one step backwards, per cell ---------------------------------------------------------
# Each takes the step's residuals (from the cell's ``forward``), the cotangent of the
# carry leaving the step and of its output, and returns the cotangent of the carry
# entering the step plus ``da``: the cotangents of the gate pre-activations, from which
# the parameter and input gradients are formed after the loop.


def _rnn_step(spec, p, res, carry_bar, y_bar):
    # s_t = f(a_t), a_t = x_t U + s_{t-1} W + b
    da = (carry_bar + y_bar) * _dact(spec, "activation")(res.s)
    return da @ p.W.T, da


def _lstm_step(spec, p, res, carry_bar, y_bar):
    dact, dgate = _dact(spec, "activation"), _dact(spec, "gate_activation")
    h_bar = carry_bar.h + y_bar
    # h_t = o_t * tanh(c_t): the output gate, and the cell state through tanh
    c_bar = carry_bar.c + h_bar * res.o * dact(res.tanh_c)
    # c_t = f_t * c_{t-1} + i_t * g_t
    da = jnp.concatenate(
        [
            c_bar * res.g * dgate(res.i),
            c_bar * res.c_prev * dgate(res.f),
            c_bar * res.i * dact(res.g),
            h_bar * res.tanh_c * dgate(res.o),
        ],
        axis=-1,
    )
    return LSTMCarry(da @ p.W.T, c_bar * res.f), da


def _gru_step(spec, p, res, carry_bar, y_bar):
    dact, dgate = _dact(spec, "activation"), _dact(spec, "gate_activation")
    H = spec.hidden_size
    h_bar = carry_bar + y_bar
    # h_t = h_{t-1} + z_t * (n_t - h_{t-1})
    z_bar = h_bar * (res.n - res.h_prev)
    da_n = h_bar * res.z * dact(res.n)
    if spec.reset_after:
        # n_t = tanh(x U_n + b_n + r_t * m_t), m_t = h_{t-1} W_n + b_hn
        da_r = da_n * res.m * dgate(res.r)
        dm = da_n * res.r
        da_h = jnp.concatenate([da_r, z_bar * dgate(res.z), dm], axis=-1)
        h_prev_bar = h_bar * (1 - res.z) + da_h @ p.W.T
        return h_prev_bar, jnp.concatenate([da_h[..., : 2 * H], da_n, dm], axis=-1)
    # n_t = tanh(x U_n + m_t W_n + b_n), m_t = r_t * h_{t-1}  (reset before the matmul)
    dm = da_n @ p.W[:, 2 * H :].T
    da_rz = jnp.concatenate([dm * res.h_prev * dgate(res.r), z_bar * dgate(res.z)], axis=-1)
    h_prev_bar = h_bar * (1 - res.z) + dm * res.r + da_rz @ p.W[:, : 2 * H].T
    return h_prev_bar, jnp.concatenate([da_rz, da_n], axis=-1)


_STEPS = {_RNNSpec: _rnn_step, _LSTMSpec: _lstm_step, _GRUSpec: _gru_step}


def _input_bar(spec, p, da):
    """``dL/dx = da_x U^T``, where ``da_x`` are the first ``k*H`` columns of ``da``."""
    if isinstance(spec, _StackSpec):
        return _input_bar(spec_of(spec.cells[0]), p[0], da[0])
    return da[..., : p.U.shape[1]] @ p.U.T


def _param_bar(spec, p, xs, res, da) -> Params:
    """The lecture's sum over k of ds_k/dW, as matrix products over all steps."""
    if isinstance(spec, _StackSpec):
        layer_res, inputs = res
        layer_xs = (xs, *inputs)
        return tuple(
            _param_bar(spec_of(c), pk, xk, rk, dk)
            for c, pk, xk, rk, dk in zip(spec.cells, p, layer_xs, layer_res, da)
        )
    kH = p.U.shape[1]
    da_x = da[..., :kH]
    U_bar = _sum_outer(xs, da_x)
    b_bar = None if p.b is None else _sum_rows(da_x)
    if isinstance(spec, _GRUSpec) and spec.reset_after:
        H = spec.hidden_size
        dm = da[..., kH:]
        da_h = jnp.concatenate([da_x[..., : 2 * H], dm], axis=-1)
        b_hn_bar = None if p.b_hn is None else _sum_rows(dm)
        return GRUResetAfterParams(U_bar, _sum_outer(res.h_prev, da_h), b_bar, b_hn_bar)
    if isinstance(spec, _GRUSpec):
        H = spec.hidden_size
        W_bar = jnp.concatenate(
            [_sum_outer(res.h_prev, da_x[..., : 2 * H]), _sum_outer(res.m, da_x[..., 2 * H :])], axis=-1
        )
        return CellParams(U_bar, W_bar, b_bar)
    return CellParams(U_bar, _sum_outer(res.h_prev, da_x), b_bar)


def step_backward(spec, p, res, carry_bar, y_bar):
    """One step backwards: ``(carry_bar_in, da)`` for a built-in cell or a stack."""
    if isinstance(spec, _StackSpec):
        layer_res, _ = res
        prev, das = [None] * len(spec.cells), [None] * len(spec.cells)
        g = y_bar  # the top layer's output is the stack's output
        for k in reversed(range(len(spec.cells))):
            sub = spec_of(spec.cells[k])
            prev[k], das[k] = step_backward(sub, p[k], layer_res[k], carry_bar[k], g)
            if k:  # layer k's input is layer k-1's output
                g = _input_bar(sub, p[k], das[k])
        return tuple(prev), tuple(das)
    return _STEPS[type(spec)](spec, p, res, carry_bar, y_bar)


def _where(valid, a, b):
    return jax.tree.map(lambda a, b: jnp.where(valid, a, b), a, b)


def manual_bptt(
    cell: Cell,
    params: Params,
    xs: Array,
    ys_bar: Array,
    *,
    carry: Any = None,
    length: Any = None,
    carry_bar: Any = None,
    reverse: bool = False,
) -> tuple[Params, Array, Any]:
    """The hand-derived backward pass of :func:`recurrax.scan`.

    Runs the forward pass keeping each step's gates, then a reverse scan carrying
    ``dL/ds_t`` (and ``dL/dc_t`` for the LSTM), then forms the parameter gradients as the
    lecture's sum over steps (see the module docstring and docs/bptt.md).

    Args:
      cell: a built-in cell (``rnn``, ``lstm``, ``gru`` in both forms) or a ``stack`` of
        them, with tanh / sigmoid / relu activations and no ``dtype`` override.
      params: its parameters.
      xs: ``[T, input_size]``, one example.
      ys_bar: ``[T, output_size]``, the cotangent ``dL/dy_t`` of ``scan``'s outputs.
      carry: the initial carry (``None``: zeros).
      length: valid steps, as in :func:`recurrax.scan`.
      carry_bar: the cotangent of ``scan``'s final carry (``None``: zeros).
      reverse: as in :func:`recurrax.scan`.

    Returns:
      ``(params_bar, xs_bar, carry_bar0)``, equal to what
      ``jax.vjp(lambda p, x, c: recurrax.scan(cell, p, x, c, length=length,
      reverse=reverse), params, xs, carry)`` gives for ``(carry_bar, ys_bar)``.

    Raises:
      NotImplementedError: for a cell it cannot differentiate by hand (naming it).

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> cell = recurrax.gru(4)
      >>> params = cell.init(jax.random.key(0), 3)
      >>> xs = jnp.ones((6, 3))
      >>> ys_bar = jnp.ones((6, 4))
      >>> p_bar, xs_bar, h0_bar = recurrax.manual_bptt(cell, params, xs, ys_bar, length=4)
      >>> _, vjp = jax.vjp(lambda p, x: recurrax.scan(cell, p, x, length=4), params, xs)
      >>> auto_p, auto_x = vjp((jnp.zeros(4), ys_bar))
      >>> bool(jnp.allclose(p_bar.W, auto_p.W, atol=1e-6)), bool((xs_bar[4:] == 0).all())
      (True, True)
    """
    spec = _check_supported(cell)
    xs = check_xs(cell, params, xs)
    carry = cell.initial_carry((), xs.dtype) if carry is None else check_carry(cell, carry, xs.dtype)
    xs, valid = mask_padding(xs, length)
    final, ys, res = forward_pass(spec, params, xs, carry, valid, reverse)
    ys_bar = jnp.asarray(ys_bar)
    if ys_bar.shape != ys.shape:
        raise ValueError(f"ys_bar must have the shape of scan's ys, {ys.shape}; got {ys_bar.shape}.")
    if carry_bar is None:
        carry_bar = jax.tree.map(jnp.zeros_like, final)
    return backward_pass(spec, params, xs, res, valid, carry_bar, ys_bar, reverse)


def forward_pass(spec, params, xs, carry, valid, reverse, unroll=1):
    """``scan``'s forward pass, keeping every step's residuals: ``(final, ys, res)``.

    ``xs`` and ``valid`` come from :func:`recurrax._scan.mask_padding` (padding zeroed).
    """
    prepared, xus = prepare(spec, params, xs)

    def body(c, inputs):
        xu, v = inputs
        new_c, y, res = step(spec, prepared, xu, c)
        if v is not None:
            new_c, y = _where(v, new_c, c), jnp.where(v, y, 0)
        return new_c, (y, res)

    final, (ys, res) = lax.scan(body, carry, (xus, valid), reverse=reverse, unroll=unroll)
    return final, ys, res


def backward_pass(spec, params, xs, res, valid, carry_bar, ys_bar, reverse, unroll=1):
    """The reverse scan and the parameter sums: ``(params_bar, xs_bar, carry_bar0)``."""

    def body(cb, inputs):
        r, yb, v = inputs
        prev, da = step_backward(spec, params, r, cb, yb)
        if v is not None:  # a padding step passed the carry through and output zero
            prev = _where(v, prev, cb)
            da = jax.tree.map(lambda d: jnp.where(v, d, 0), da)
        return prev, da

    carry_bar0, da = lax.scan(body, carry_bar, (res, ys_bar, valid), reverse=not reverse, unroll=unroll)
    return _param_bar(spec, params, xs, res, da), _input_bar(spec, params, da), carry_bar0


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 5, 6))
def scan_with_manual_vjp(spec, params, xs, carry, valid, reverse, unroll):
    """``scan``'s forward pass whose gradient is :func:`backward_pass` (a ``custom_vjp``)."""
    final, ys, _ = forward_pass(spec, params, xs, carry, valid, reverse, unroll)
    return final, ys


def _manual_fwd(spec, params, xs, carry, valid, reverse, unroll):
    final, ys, res = forward_pass(spec, params, xs, carry, valid, reverse, unroll)
    return (final, ys), (params, xs, res, valid)


def _manual_bwd(spec, reverse, unroll, saved, cotangents):
    params, xs, res, valid = saved
    carry_bar, ys_bar = cotangents
    p_bar, xs_bar, carry_bar0 = backward_pass(spec, params, xs, res, valid, carry_bar, ys_bar, reverse, unroll)
    return p_bar, xs_bar, carry_bar0, None


scan_with_manual_vjp.defvjp(_manual_fwd, _manual_bwd)
