"""The LSTM layers' ``impl="cudnn"``: cuDNN's fused LSTM through ``jax.experimental.rnn``.

cuDNN runs a whole LSTM layer (all steps, both directions) as one kernel on NVIDIA GPUs.
``jax.experimental.rnn.lstm`` takes batch-first inputs and one flat weight vector in
cuDNN's layout (its module docstring): for each pseudo-layer (forward, then reverse) the
gate-stacked ``W_ih`` ``[4H, I]`` and ``W_hh`` ``[4H, H]``, then for each the biases
``b_ih`` and ``b_hh`` ``[4H]``, gates in the order ``(i, f, g, o)``. A recurrax LSTM has the
same gate order and one bias, so ``W_ih = U.T``, ``W_hh = W.T``, ``b_ih = b``, ``b_hh = 0``.

Padding follows :func:`recurrax.scan` exactly: cuDNN reads each example's first
``length`` steps (the reverse direction from ``length - 1`` down), and this module adds
what cuDNN does not do: ``length == 0`` (cuDNN rejects it; such an example runs one step
on zeros, and its outputs and final carry are replaced by zeros and the initial carry),
a reverse unidirectional layer (the valid prefix is flipped in and out), and zeroing the
padding before the kernel so that NaN padding reaches neither values nor gradients.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from recurrax._core._cells import LSTM, CellParams, LSTMCarry
from recurrax._core._validate import per_example_length

IMPLS = ("scan", "cudnn")
# The matrix-product precision of the kernel. jax.experimental.rnn lets cuDNN use TF32 tensor
# cores (inputs rounded to 10 mantissa bits) when it is given no precision; recurrax passes
# one always, "highest" unless the layer asks for "tensorfloat32" (docs/design.md).
PRECISIONS = {"highest": jax.lax.Precision.HIGHEST, "tensorfloat32": jax.lax.Precision.HIGH}
DEFAULT_PRECISION = "highest"


def check_impl(impl: str, cells: Sequence[Any], precision: str | None = None) -> str:
    """``impl`` after checking that every cell of the layer can run with it, and ``precision``
    (``None``: :data:`DEFAULT_PRECISION`) that it is one for ``impl="cudnn"``."""
    if impl not in IMPLS:
        raise ValueError(f'impl must be "scan" or "cudnn"; got {impl!r}.')
    if precision is not None:
        if impl != "cudnn":
            raise ValueError(f'precision={precision!r} sets the cuDNN kernel\'s matrix-product precision and does '
                             f'nothing with impl={impl!r}; drop it, or use impl="cudnn". (For scan, use '
                             f'jax.default_matmul_precision.)')
        if precision not in PRECISIONS:
            raise ValueError(f'precision must be "highest" (float32 products) or "tensorfloat32" (TF32 tensor '
                             f'cores, about 1e-3 relative rounding); got {precision!r}.')
    if impl == "cudnn":
        for cell in cells:
            default = (type(cell) is LSTM and cell.gate_activation is jax.nn.sigmoid and cell.activation is jnp.tanh
                       and not (cell.proj_size or cell.peephole or cell.layer_norm))
            if not default:
                raise ValueError(
                    f'impl="cudnn" runs the standard LSTM (recurrax.LSTM with sigmoid gates and tanh, no '
                    f'proj_size, peephole or layer_norm); got {cell!r}. Use impl="scan" for other cells.')
    return impl


def pack_weights(params: Sequence[CellParams], dtype: Any) -> jax.Array:
    """cuDNN's flat weight vector for one layer: ``params`` per direction (forward, reverse)."""
    def bias(p):
        return jnp.zeros(p.W.shape[-1], dtype) if p.b is None else p.b.astype(dtype)

    matrices = [m.T.astype(dtype).ravel() for p in params for m in (p.U, p.W)]
    biases = [b for p in params for b in (bias(p), jnp.zeros(p.W.shape[-1], dtype))]
    return jnp.concatenate(matrices + biases)


def _cudnn_kernel(x, h0, c0, weights, seq_lengths, **sizes_and_precision):
    from jax.experimental import rnn

    if x.dtype != jnp.float32:
        raise TypeError(f'impl="cudnn" takes float32 xs (jax.experimental.rnn supports no other '
                        f'dtype); got {x.dtype}. Cast xs, or use impl="scan".')
    try:
        jax.devices("gpu")
    except RuntimeError:
        raise RuntimeError(f'impl="cudnn" needs an NVIDIA GPU (cuDNN through jax.experimental.rnn); '
                           f'this process has only {jax.devices()}. Use impl="scan".') from None

    return rnn.lstm(x, h0, c0, weights, seq_lengths, dropout=0.0, **sizes_and_precision)


def _flip_valid(x: jax.Array, length: jax.Array) -> jax.Array:
    """``x`` ``[B, T, ...]`` with each example's first ``length`` steps reversed, padding kept."""
    t = jnp.arange(x.shape[1], dtype=length.dtype)
    t = t[None, :]
    src = jnp.where(t < length[:, None], length[:, None] - 1 - t, jnp.broadcast_to(t, (x.shape[0], x.shape[1])))
    return jnp.take_along_axis(x, src.reshape(src.shape + (1,) * (x.ndim - 2)), axis=1)


def lstm_layer(
    params: Sequence[CellParams],
    xs: jax.Array,
    carries: Sequence[LSTMCarry],
    length: Any,
    reverse: bool = False,
    precision: str | None = None,
) -> tuple[list, jax.Array]:
    """One uni- (one entry in ``params``) or bidirectional (two) LSTM layer through cuDNN.

    ``xs`` ``[T, *batch, I]`` and ``carries`` with ``[*batch, H]`` leaves, checked by the
    caller as for ``scan``, ``length`` as ``scan`` takes it, and ``precision`` one of
    :data:`PRECISIONS` (``None``: :data:`DEFAULT_PRECISION`). Returns the final carry per
    direction and ``ys`` ``[T, *batch, D*H]``.
    """
    T, batch, I = xs.shape[0], xs.shape[1:-1], xs.shape[-1]
    B, H = math.prod(batch), params[0].W.shape[0]
    x = jnp.swapaxes(xs.reshape(T, B, I), 0, 1)
    length = per_example_length(length, T, batch).reshape(B)
    valid = jnp.arange(T, dtype=jnp.int32)[None, :] < length[:, None]  # [B, T]
    x = jnp.where(valid[..., None], x, jnp.zeros((), x.dtype))
    if reverse:
        x = _flip_valid(x, length)
    h0 = jnp.stack([c.h.reshape(B, H) for c in carries]).astype(x.dtype)
    c0 = jnp.stack([c.c.reshape(B, H) for c in carries]).astype(x.dtype)
    y, hn, cn = _cudnn_kernel(x, h0, c0, pack_weights(params, x.dtype), jnp.maximum(length, 1),
                       input_size=I, hidden_size=H, num_layers=1, bidirectional=len(params) == 2,
                       precision=PRECISIONS[precision or DEFAULT_PRECISION])
    if reverse:
        y = _flip_valid(y, length)
    y = jnp.where(valid[..., None], y, jnp.zeros((), y.dtype))
    empty = (length == 0)[None, :, None]
    hn, cn = jnp.where(empty, h0, hn), jnp.where(empty, c0, cn)
    finals = [LSTMCarry(hn[d].reshape(*batch, H), cn[d].reshape(*batch, H)) for d in range(len(params))]
    return finals, jnp.swapaxes(y, 0, 1).reshape(T, *batch, -1)
