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


def layer_norm(v, gain, bias=None, eps=1e-5):
    """Ba et al.'s layer norm over the last axis, with a gain (and a bias)."""
    mean = v.mean(-1, keepdims=True)
    var = ((v - mean) ** 2).mean(-1, keepdims=True)
    return (v - mean) / np.sqrt(var + eps) * gain + (0.0 if bias is None else bias)


def lstm_step(p, carry, x, act=np.tanh, gate=sigmoid):
    """One LSTM step on ``carry = (h, c)``, gates written out one by one.

    The options are read from the params: ``W_hr`` (proj_size), ``peephole``, and the
    layer norms' ``gain_x``, ``gain_h`` (over all 4H of each side), ``gain_c``, ``b_c``.
    """
    h, c = carry
    H = c.shape[-1]
    if p.gain_x is None:
        def pre(k):
            return x @ _block(p.U, k, H) + h @ _block(p.W, k, H) + _bias(p, k, H)
    else:
        xu, hw = layer_norm(x @ p.U, p.gain_x), layer_norm(h @ p.W, p.gain_h)

        def pre(k):
            return _block(xu, k, H) + _block(hw, k, H) + _bias(p, k, H)

    def peep(k, c):
        return 0.0 if p.peephole is None else _block(p.peephole, k, H) * c

    i = gate(pre(0) + peep(0, c))
    f = gate(pre(1) + peep(1, c))
    g = act(pre(2))
    c = f * c + i * g
    o = gate(pre(3) + peep(2, c))
    h = o * act(c if p.gain_c is None else layer_norm(c, p.gain_c, p.b_c))
    return (h if p.W_hr is None else h @ p.W_hr), c


def _gru_sides(p, h, x, H):
    """A GRU's input-side ``x U`` (layer-normed per (r, z) and n columns when the params have gains)."""
    xu = x @ p.U
    if getattr(p, "gain_x", None) is None:
        return xu
    return np.concatenate([layer_norm(xu[..., : 2 * H], p.gain_x[: 2 * H]),
                           layer_norm(xu[..., 2 * H :], p.gain_x[2 * H :])], -1)


def _gru_h(p, v, k0, k1, H):
    """``v @ W`` on the gate blocks ``k0:k1``, layer-normed over them when the params have gains."""
    out = v @ p.W[:, k0 * H : k1 * H]
    return out if getattr(p, "gain_h", None) is None else layer_norm(out, p.gain_h[k0 * H : k1 * H])


def gru_step(p, h, x, act=np.tanh, gate=sigmoid):
    """The lecture's GRU: the reset gate scales ``h`` before ``W_n``."""
    H = h.shape[-1]
    xu, hw = _gru_sides(p, h, x, H), _gru_h(p, h, 0, 2, H)
    r = gate(_block(xu, 0, H) + _block(hw, 0, H) + _bias(p, 0, H))
    z = gate(_block(xu, 1, H) + _block(hw, 1, H) + _bias(p, 1, H))
    n = act(_block(xu, 2, H) + _gru_h(p, r * h, 2, 3, H) + _bias(p, 2, H))
    return (1.0 - z) * h + z * n


def gru_reset_after_step(p, h, x, act=np.tanh, gate=sigmoid):
    """The cuDNN / PyTorch GRU: ``n = act(x U_n + b_n + r * (h W_n + b_hn))``."""
    H = h.shape[-1]
    xu, hw = _gru_sides(p, h, x, H), np.concatenate([_gru_h(p, h, 0, 2, H), _gru_h(p, h, 2, 3, H)], -1)
    r = gate(_block(xu, 0, H) + _block(hw, 0, H) + _bias(p, 0, H))
    z = gate(_block(xu, 1, H) + _block(hw, 1, H) + _bias(p, 1, H))
    b_hn = 0.0 if p.b_hn is None else p.b_hn
    n = act(_block(xu, 2, H) + _bias(p, 2, H) + r * (_block(hw, 2, H) + b_hn))
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
