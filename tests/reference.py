"""Slow, obviously correct NumPy versions of the cells and of ``scan``'s semantics.

Tests use these as the independent reference: every gate is written out on its own, as
in the equations of ``recurrax/_core/_cells.py``, and the sequence loop is a plain Python
``for`` over the valid steps, one example at a time. Nothing here is used by the library.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import recurrax


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


_NUMPY_ACTIVATIONS = {
    jnp.tanh: np.tanh,
    jax.nn.sigmoid: sigmoid,
    jax.nn.relu: lambda a: np.maximum(a, 0.0),
}


def _block(a, k, H):
    return a[..., k * H : (k + 1) * H]


def _bias(p, k, H):
    return 0.0 if p.b is None else _block(p.b, k, H)


def rnn_step(p, s, x, act=np.tanh):
    """``s_t = act(x U + s W + b)``."""
    return act(x @ p.U + s @ p.W + (0.0 if p.b is None else p.b))


def lstm_step(p, carry, x, act=np.tanh, gate=sigmoid):
    """One LSTM step on ``carry = (h, c)``, gates written out one by one."""
    h, c = carry
    H = h.shape[-1]

    def pre(k):
        return x @ _block(p.U, k, H) + h @ _block(p.W, k, H) + _bias(p, k, H)

    i, f, g, o = gate(pre(0)), gate(pre(1)), act(pre(2)), gate(pre(3))
    c = f * c + i * g
    return o * act(c), c


def gru_step(p, h, x, act=np.tanh, gate=sigmoid):
    """The lecture's GRU: the reset gate scales ``h`` before ``W_n``."""
    H = h.shape[-1]
    r = gate(x @ _block(p.U, 0, H) + h @ _block(p.W, 0, H) + _bias(p, 0, H))
    z = gate(x @ _block(p.U, 1, H) + h @ _block(p.W, 1, H) + _bias(p, 1, H))
    n = act(x @ _block(p.U, 2, H) + (r * h) @ _block(p.W, 2, H) + _bias(p, 2, H))
    return (1.0 - z) * h + z * n


def gru_reset_after_step(p, h, x, act=np.tanh, gate=sigmoid):
    """The cuDNN / PyTorch GRU: ``n = act(x U_n + b_n + r * (h W_n + b_hn))``."""
    H = h.shape[-1]
    r = gate(x @ _block(p.U, 0, H) + h @ _block(p.W, 0, H) + _bias(p, 0, H))
    z = gate(x @ _block(p.U, 1, H) + h @ _block(p.W, 1, H) + _bias(p, 1, H))
    b_hn = 0.0 if p.b_hn is None else p.b_hn
    n = act(x @ _block(p.U, 2, H) + _bias(p, 2, H) + r * (h @ _block(p.W, 2, H) + b_hn))
    return (1.0 - z) * h + z * n


def min_gru_step(p, h, x):
    H = h.shape[-1]
    z = sigmoid(x @ _block(p.U, 0, H) + _bias(p, 0, H))
    return (1.0 - z) * h + z * (x @ _block(p.U, 1, H) + _bias(p, 1, H))


def min_lstm_step(p, h, x):
    H = h.shape[-1]
    f = sigmoid(x @ _block(p.U, 0, H) + _bias(p, 0, H))
    i = sigmoid(x @ _block(p.U, 1, H) + _bias(p, 1, H))
    return f / (f + i) * h + i / (f + i) * (x @ _block(p.U, 2, H) + _bias(p, 2, H))


def stack_step(steps):
    """The NumPy step of a stack of layers with these steps."""

    def step(params, carry, x):
        new = []
        for f, p, c in zip(steps, params, carry):
            c, x = f(p, c, x)
            new.append(c)
        return tuple(new), x

    return step


def dropout_step(step, x_mask, carry_mask):
    """Variational dropout around ``step(params, carry, x, t)``: the step reads ``x * x_mask``
    and its carry times ``carry_mask`` (an LSTM's ``h`` only); ``None``: no mask."""

    def masked(mask, carry):
        if mask is None:
            return carry
        if isinstance(mask, recurrax.LSTMCarry):
            return (carry[0] * mask.h, carry[1])
        if isinstance(mask, tuple):
            return tuple(masked(m, c) for m, c in zip(mask, carry))
        return carry * mask

    def run(params, carry, x, t):
        return step(params, masked(carry_mask, carry), x if x_mask is None else x * x_mask, t)

    return run


def zoneout_step(step, keep):
    """Zoneout around ``step(params, carry, x, t)``: each carry unit is ``k * previous + (1 - k) *
    new`` with ``k`` the float ``keep`` (evaluation) or ``keep``'s masks at step ``t``
    (leaves ``[T, ...]`` in the carry's order)."""

    def run(params, carry, x, t):
        new, y = step(params, carry, x, t)
        ks = [keep] * len(jax.tree.leaves(new)) if isinstance(keep, float) else [m[t] for m in jax.tree.leaves(keep)]
        mixed = [k * old + (1 - k) * n for k, old, n in zip(ks, jax.tree.leaves(carry), jax.tree.leaves(new),
                                                            strict=True)]
        return jax.tree.unflatten(jax.tree.structure(new), mixed), y

    return run


def step_fn(cell):
    """A NumPy ``step(params, carry, x) -> (carry, y)`` equal to a built-in cell or stack."""
    if isinstance(cell, recurrax.Stack):
        return stack_step([step_fn(c) for c in cell.cells])
    same = lambda f: lambda p, h, x: (lambda h: (h, h))(f(p, h, x))  # noqa: E731
    if isinstance(cell, recurrax.MinGRU):
        return same(min_gru_step)
    if isinstance(cell, recurrax.MinLSTM):
        return same(min_lstm_step)
    if not isinstance(cell, (recurrax.RNN, recurrax.LSTM, recurrax.GRU)):
        raise NotImplementedError(f"no NumPy reference for {cell!r}")
    act = _NUMPY_ACTIVATIONS[cell.activation]
    if isinstance(cell, recurrax.RNN):
        return same(lambda p, s, x: rnn_step(p, s, x, act))
    gate = _NUMPY_ACTIVATIONS[cell.gate_activation]
    if isinstance(cell, recurrax.LSTM):
        return lambda p, c, x: (lambda hc: (hc, hc[0]))(lstm_step(p, c, x, act, gate))
    f = gru_reset_after_step if cell.reset_after else gru_step
    return same(lambda p, h, x: f(p, h, x, act, gate))


def to_numpy(tree):
    """Every array leaf as a NumPy array (LSTM carries become ``(h, c)`` tuples)."""
    return jax.tree.map(np.asarray, tree)


def run(step, params, xs, carry, *, length=None, reverse=False, resets=None, timed=False):
    """``recurrax.scan``'s documented semantics as a Python loop: returns ``(final_carry, ys)``.

    ``ys`` is zero past ``length``; the valid prefix runs backwards when ``reverse``. With
    ``resets`` (bool ``[T]``) each segment (a reset starts one) runs alone from ``carry``:
    backwards from its own last step when ``reverse``. ``timed``: ``step`` takes the step
    index too, ``step(params, carry, x, t)``.
    """
    xs = np.asarray(xs)
    T = xs.shape[0]
    length = T if length is None else int(length)
    starts = [0] + [t for t in range(1, length) if resets is not None and resets[t]]
    segments = [range(a, b) for a, b in zip(starts, starts[1:] + [length]) if a < b]
    order = [t for seg in reversed(segments) for t in reversed(seg)] if reverse else [t for s in segments for t in s]
    first = {seg[-1] if reverse else seg[0] for seg in segments}
    initial = carry
    ys = None
    for t in order:
        if t in first:
            carry = initial
        carry, y = step(params, carry, xs[t], t) if timed else step(params, carry, xs[t])
        if ys is None:
            ys = np.zeros((T, *np.shape(y)), np.asarray(y).dtype)
        ys[t] = y
    if ys is None:  # length == 0: only the output's shape is needed
        y = np.asarray((step(params, carry, xs[0], 0) if timed else step(params, carry, xs[0]))[1])
        ys = np.zeros((T, *y.shape), y.dtype)
    return carry, ys
