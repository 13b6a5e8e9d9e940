"""The built-in cells and their parameters.

Equations (``sig`` is ``gate_activation``, ``tanh`` is ``activation``)::

    RNN     s_t = tanh(x_t U + s_{t-1} W + b)
    LSTM    [i f g o] = x_t U + h_{t-1} W + b        (pre-activations, blocks of H)
            i, f, o = sig(.), g = tanh(.)
            c_t = f * c_{t-1} + i * g,   h_t = o * tanh(c_t)
    GRU     [r z] = sig(x_t U_rz + h_{t-1} W_rz + b_rz)
            n_t = tanh(x_t U_n + (r_t * h_{t-1}) W_n + b_n)       reset before the matmul
            h_t = (1 - z_t) * h_{t-1} + z_t * n_t
    GRU, reset_after=True (cuDNN / PyTorch):
            n_t = tanh(x_t U_n + b_n + r_t * (h_{t-1} W_n + b_hn))
    minGRU  z = sig(x U_z + b_z), h~ = x U_h + b_h,  h_t = (1 - z) * h_{t-1} + z * h~
    minLSTM f, i = sig(x U_f + b_f), sig(x U_i + b_i), h~ = x U_h + b_h,
            h_t = f / (f + i) * h_{t-1} + i / (f + i) * h~      (Feng et al. 2024)

Weight layout: ``U`` is ``[input_size, k*H]``, ``W`` is ``[H, k*H]``, ``b`` is ``[k*H]``,
applied as ``x @ U`` (no transposes), gate blocks in the order LSTM ``(i, f, g, o)``, GRU
``(r, z, n)``, minGRU ``(z, h~)``, minLSTM ``(f, i, h~)``. Each block is initialised
separately, so an orthogonal ``recurrent_init`` makes every ``[H, H]`` block orthogonal.

Every built-in cell is a frozen dataclass: it compares and hashes by value (two
``LSTM(8)`` share compiled code) and its methods are the cell protocol plus the optional
capabilities of docs/cells.md, all of one cell's maths (forward, hand-derived backward,
Jacobian diagonal) in its class. The library uses those methods exactly as it uses a
user's: nothing reaches a built-in cell any other way.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from recurrax._core._base import Array, Carry, Params, PRNGKey, add_bias, offered_unless
from recurrax._core._validate import check_positive_int

Initializer = Callable[[PRNGKey, tuple, Any], Array]


class CellParams(NamedTuple):
    """Parameters of the RNN, LSTM and (reset-before) GRU cells.

    Attributes:
      U: ``[input_size, k*H]`` input weights.
      W: ``[H, k*H]`` recurrent weights.
      b: ``[k*H]`` bias, or ``None`` for a cell built with ``use_bias=False``.
    """

    U: Array
    W: Array
    b: Array | None


class GRUResetAfterParams(NamedTuple):
    """Parameters of the reset-after GRU: :class:`CellParams` plus ``b_hn`` ``[H]``.

    ``b_hn`` is the bias inside the reset product, ``r * (h W_n + b_hn)`` (PyTorch's
    ``bias_hh`` for the n gate).
    """

    U: Array
    W: Array
    b: Array | None
    b_hn: Array | None


class MinCellParams(NamedTuple):
    """Parameters of :class:`MinGRU` and :class:`MinLSTM`.

    Attributes:
      U: ``[input_size, k*H]``, gate blocks ``(z, h~)`` (minGRU, k=2) or
        ``(f, i, h~)`` (minLSTM, k=3), applied as ``x @ U``.
      b: ``[k*H]`` bias, or ``None`` for a cell built with ``use_bias=False``.
    """

    U: Array
    b: Array | None


class LSTMCarry(NamedTuple):
    """The LSTM's carry: output ``h`` and cell state ``c``, ``[*batch, H]`` each."""

    h: Array
    c: Array


def uniform_init(scale: float) -> Initializer:
    """An initializer drawing from ``U(-scale, scale)``.

    The built-in cells default to ``uniform_init(1 / sqrt(hidden_size))`` for every weight
    and bias, as PyTorch does.

    Example:
      >>> import jax, recurrax
      >>> w = recurrax.uniform_init(0.1)(jax.random.key(0), (3, 4), jax.numpy.float32)
      >>> bool((abs(w) <= 0.1).all())
      True
    """

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


# Derivatives of the activations the hand-written backward pass knows, in terms of their
# OUTPUT y = f(a): that is what the forward pass keeps, so no pre-activation is stored.
_DERIVATIVES = {
    jnp.tanh: lambda y: 1 - y * y,
    jax.nn.sigmoid: lambda y: y * (1 - y),
    jax.nn.relu: lambda y: (y > 0).astype(y.dtype),
}


def _sigmoid(x):
    # jax.nn.sigmoid's value through one tanh: XLA:CPU runs it faster in a loop body.
    return 0.5 * jnp.tanh(0.5 * x) + 0.5


def _last(v: Array, like: Array) -> Array:
    """``v`` ``[n]`` reshaped to broadcast against ``like`` ``[..., n]`` (rank promotion is explicit)."""
    return v.reshape((1,) * (like.ndim - 1) + v.shape)


def _name(value) -> str:
    """A function or dtype by its name (``relu``, ``bfloat16``), anything else by its repr."""
    if isinstance(value, (np.dtype, type)) or (hasattr(value, "dtype") and hasattr(value, "name")):
        return jnp.dtype(value).name
    return getattr(value, "__name__", None) or repr(value)


def _sum_outer(a: Array, b: Array) -> Array:
    """``sum_t a_t^T b_t`` over every leading (time and batch) axis: ``[..., m], [..., n] -> [m, n]``."""
    return jnp.einsum("...i,...j->ij", a, b)


def _sum_rows(a: Array) -> Array:
    return a.reshape(-1, a.shape[-1]).sum(0)


@dataclasses.dataclass(frozen=True, repr=False)
class _Dense:
    """What every built-in cell shares: ``x @ U`` with per-block init, config, checks, repr."""

    hidden_size: int
    _: dataclasses.KW_ONLY
    kernel_init: Initializer | None = None
    bias_init: Initializer | None = None
    use_bias: bool = True
    param_dtype: Any = jnp.float32

    num_blocks: ClassVar[int]
    # From this many examples on, scan runs project() in the loop by default: measured per
    # cell on XLA:CPU (BENCHMARKS.md, "projection placement").
    _in_loop_from_batch: ClassVar[float] = math.inf

    def __post_init__(self):
        check_positive_int("hidden_size", self.hidden_size)

    def preferred_projection(self, batch_shape: tuple) -> str:
        """Where ``scan(..., projection=None)`` runs :meth:`project` for a batch of this shape."""
        return "in_loop" if math.prod(batch_shape) >= self._in_loop_from_batch else "before"

    def __repr__(self):
        # Only what differs from the defaults: LSTM(8) reads as LSTM(hidden_size=8).
        shown = [f"hidden_size={self.hidden_size}"]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "hidden_size" and f.default is not dataclasses.MISSING and value is not f.default \
                    and value != f.default:
                shown.append(f"{f.name}={_name(value)}")
        return f"{type(self).__name__}({', '.join(shown)})"

    def _blocks(self, init, key, shape):
        H, dtype = self.hidden_size, self.param_dtype
        default = uniform_init(1.0 / math.sqrt(H))
        keys = jax.random.split(key, self.num_blocks)
        return jnp.concatenate([(init or default)(k, (*shape, H), dtype) for k in keys], -1)

    def initial_carry(self, batch_shape: tuple = (), dtype: Any = jnp.float32) -> Carry:
        """Zeros ``[*batch_shape, H]``."""
        return jnp.zeros((*tuple(batch_shape), self.hidden_size), dtype)

    def apply(self, params: Params, carry: Carry, x: Array) -> tuple[Carry, Array]:
        """One step: ``step(params, carry, project(params, x))``; ``x`` ``[*batch, input_size]``."""
        return self.step(params, carry, self.project(params, x))

    def project(self, params: Params, xs: Array) -> Array:
        """The split form's input work: ``xs @ U`` ``[..., k*H]`` for ``xs`` ``[..., input_size]``.

        The bias is added in :meth:`step`: adding it to the whole ``[T, ..., k*H]``
        projection made XLA:CPU's loop slower (benchmarks/HISTORY.md, "bias added per step").
        """
        xs = self._check_input(params, xs)
        U = params.U
        dtype = getattr(self, "dtype", None)
        if dtype is not None:
            xs, U = xs.astype(dtype), U.astype(dtype)
        return xs @ U

    def _check_input(self, params, xs):
        xs = jnp.asarray(xs)
        self._check_params(params)
        U = params.U
        if xs.ndim == 0 or xs.shape[-1] != U.shape[0]:
            raise ValueError(
                f"x must be [..., {U.shape[0]}] (input_size={U.shape[0]}, from params.U) for "
                f"this {self!r}; got shape {xs.shape}. Pass inputs with {U.shape[0]} features or "
                f"re-init the params with cell.init(key, {xs.shape[-1] if xs.ndim else 1})."
            )
        return xs

    def _check_params(self, params):
        H, k = self.hidden_size, self.num_blocks
        U = getattr(params, "U", None)
        W = getattr(params, "W", None)
        want_W = self._params_type is not MinCellParams
        if (not isinstance(params, self._params_type) or U is None or U.ndim != 2 or U.shape[1] != k * H
                or (want_W and (W is None or W.shape != (H, k * H)))):
            got = jax.tree.map(jnp.shape, params) if isinstance(params, tuple) else type(params).__name__
            expected = f"U [input_size, {k * H}]" + (f" and W [{H}, {k * H}]" if want_W else "")
            raise ValueError(
                f"params do not fit {self!r}: expected {self._params_type.__name__} with {expected}; "
                f"got {got}. Create them with this cell's init(key, input_size)."
            )

    def _check_carry(self, carry, xu):
        for leaf in jax.tree.leaves(carry):
            if leaf.shape != (*xu.shape[:-1], self.hidden_size):
                raise ValueError(
                    f"the carry must be [*batch, {self.hidden_size}] with the batch dimensions of x "
                    f"{xu.shape[:-1]}; got a carry leaf of shape {leaf.shape}. Use "
                    f"cell.initial_carry(x.shape[:-1])."
                )

    _params_type: ClassVar[type] = CellParams


@dataclasses.dataclass(frozen=True, repr=False)
class _Recurrent(_Dense):
    """RNN, LSTM and GRU: a recurrent matrix ``W``, activations, an optional compute dtype."""

    activation: Callable[[Array], Array] = jnp.tanh
    recurrent_init: Initializer | None = None
    dtype: Any = None

    def init(self, key: PRNGKey, input_size: int) -> Params:
        """``CellParams`` (``U`` ``[input_size, k*H]``, ``W`` ``[H, k*H]``, ``b`` ``[k*H]``)."""
        check_positive_int("input_size", input_size)
        ku, kw, kb, kx = jax.random.split(key, 4)
        U = self._blocks(self.kernel_init, ku, (input_size,))
        W = self._blocks(self.recurrent_init, kw, (self.hidden_size,))
        b = self._blocks(self.bias_init, kb, ()) if self.use_bias else None
        return self._make_params(U, W, b, kx)

    def _make_params(self, U, W, b, key):
        return CellParams(U, W, b)

    # Whether apply() can form x @ U and h @ W in one product (the reset-after GRU cannot:
    # its reset gate multiplies h @ W_n alone).
    _joint_product: ClassVar[bool] = True
    _in_loop_from_batch: ClassVar[float] = 4

    def apply(self, params: Params, carry: Carry, x: Array) -> tuple[Carry, Array]:
        """One step from ``x`` ``[*batch, input_size]``: ``step(params, carry, project(params, x))``.

        The RNN, the LSTM and the reset-before GRU compute ``x @ U + h @ W`` here as ONE
        matrix product ``[x, h] @ [U; W]``: on XLA:CPU a step's cost is mostly its number of
        operations and thread hand-offs, not its flops (benchmarks/HISTORY.md, "one
        product per step"). ``scan(..., projection="in_loop")`` runs this.
        """
        if not self._joint_product:
            return super().apply(params, carry, x)
        (carry, y), _ = self._run(params, carry, self._check_input(params, x), joint=True)
        return carry, y

    def step(self, params: Params, carry: Carry, xu: Array) -> tuple[Carry, Array]:
        """The split form's recurrence from ``xu = project(params, x)``: ``(carry, y)``."""
        self._check_params(params)
        return self._run(params, carry, xu, joint=False)[0]

    def _declines_by_hand(self) -> str | None:
        """Why the hand-derived derivatives (backward, Jacobian diagonal) cannot run, or ``None``."""
        for which in ("activation", "gate_activation"):
            fn = getattr(self, which, None)
            if fn is not None and fn not in _DERIVATIVES:
                return (f"no hand-derived derivative for {which}={_name(fn)} (known: tanh, sigmoid, relu); "
                        f"use jax.vjp / backward='autodiff'")
        return None

    @offered_unless(_declines_by_hand)
    def step_fwd(self, params: Params, carry: Carry, xu: Array):
        """:meth:`step` plus the residuals :meth:`step_bwd` needs: ``((carry, y), residuals)``."""
        self._check_params(params)
        return self._run(params, carry, xu, joint=False)

    def _run(self, params, carry, v, joint):
        """A step from ``v``: ``x`` itself (``joint``) or ``xu = x @ U``."""
        self._check_carry(carry, v)
        carry_dtype = jax.tree.leaves(carry)[0].dtype
        params, carry, v = self._compute_dtype((params, carry, v))
        new, res = self._forward(params, carry, v, joint)
        # The carry keeps the dtype it came in with, so lax.scan's loop type is stable
        # when the computation runs in a different (e.g. lower) precision.
        new = jax.tree.map(lambda a: a.astype(carry_dtype), new)
        return (new, new.h if isinstance(new, LSTMCarry) else new), res

    def _compute_dtype(self, tree):
        """``tree`` cast to the compute ``dtype`` (unchanged without one)."""
        if self.dtype is None:
            return tree
        return jax.tree.map(lambda a: a.astype(self.dtype), tree)

    @staticmethod
    def _preactivation(params, v, h, joint, lo=0, hi=None):
        """``x @ U + h @ W + b`` on the columns ``lo:hi``: from ``v = x``, as one product
        ``[x, h] @ [U; W]`` (``joint``), or from ``v = x @ U``."""
        cols = slice(lo, hi)
        b = None if params.b is None else params.b[cols]
        if joint:
            return add_bias(jnp.concatenate([v, h], -1) @ jnp.concatenate([params.U[:, cols], params.W[:, cols]]), b)
        return add_bias(v[..., cols], b) + h @ params.W[:, cols]

    @offered_unless(_declines_by_hand)
    def step_bwd(self, params: Params, res: Any, carry_bar: Carry, y_bar: Array):
        """One step backwards: ``(carry_bar entering the step, dL/d(xu + b))``."""
        # in the compute dtype, as the residuals; backward_pass casts back to the carry's dtype
        return self._backward(*self._compute_dtype((params, res, carry_bar, y_bar)))

    @offered_unless(_declines_by_hand)
    def step_bwd_params(self, params: Params, res: Any, da: Array):
        """``(params_bar, xu_bar)`` from ALL steps' residuals and ``da`` (leading ``[T, *batch]``).

        ``params_bar`` is what the step's own use of ``W``, ``b`` (and ``b_hn``) contributes,
        each a sum over time and batch in one contraction; ``U``'s part comes from
        :meth:`project`'s transpose.
        """
        return self._backward_params(*self._compute_dtype((params, res, da)))

    def _backward_params(self, params, res, da):
        W_bar = _sum_outer(res.h_prev, da)
        b_bar = None if params.b is None else _sum_rows(da)
        return CellParams(jnp.zeros_like(params.U), W_bar, b_bar), da

    def _dact(self, which: str):
        return _DERIVATIVES[getattr(self, which)]  # only reached when _declines_by_hand gave None

    def _diag_w(self, params, k):
        H = self.hidden_size
        return jnp.diagonal(params.W[:, k * H : (k + 1) * H])

    @offered_unless(_declines_by_hand)
    def step_jacobian_diagonal(self, params: Params, carry: Carry, xu: Array):
        """``((new_carry, y), diag)``: ``diag`` is the exact diagonal of ``d new_carry / d carry``.

        ``diag`` has the carry's structure.

        About the cost of one step (quasi-DEER in :func:`recurrax.parallel_scan`).
        """
        out, res = self.step_fwd(params, carry, xu)
        # with a compute dtype the residuals are in it; the diagonal has the carry's dtype
        diag = self._diagonal(*self._compute_dtype((params, res)))
        return out, jax.tree.map(lambda d, c: d.astype(c.dtype), diag, carry)


@dataclasses.dataclass(frozen=True, repr=False)
class RNN(_Recurrent):
    """The vanilla (Elman) RNN cell: ``s_t = activation(x_t U + s_{t-1} W + b)``.

    Args:
      hidden_size: ``H``, the size of the state ``s_t``.
      activation: ``jnp.tanh`` by default (``jax.nn.relu`` is the other one PyTorch offers).
      kernel_init, recurrent_init, bias_init: initializers ``(key, shape, dtype)`` for
        ``U``, ``W`` and ``b``; ``None`` means ``U(-1/sqrt(H), 1/sqrt(H))`` as in PyTorch.
      use_bias: ``False`` gives ``params.b = None``.
      dtype: the dtype to compute in (params, input and carry are cast to it); ``None``
        computes in the inputs' own dtype. The new carry keeps the incoming carry's dtype.
      param_dtype: the dtype ``init`` creates parameters in.

    Its params are :class:`CellParams` (``U`` ``[I, H]``, ``W``
    ``[H, H]``, ``b`` ``[H]``) and carry ``s`` ``[H]``; the output is ``s_t``.

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> cell = recurrax.RNN(4)
      >>> cell
      RNN(hidden_size=4)
      >>> params = cell.init(jax.random.key(0), 2)
      >>> s, y = cell.apply(params, cell.initial_carry(), jnp.ones(2))
      >>> bool(jnp.allclose(y, jnp.tanh(jnp.ones(2) @ params.U + params.b)))
      True
    """

    num_blocks: ClassVar[int] = 1

    class Residual(NamedTuple):
        h_prev: Array
        s: Array

    def _forward(self, params, h, v, joint):
        s = self.activation(self._preactivation(params, v, h, joint))
        return s, RNN.Residual(h, s)

    def _backward(self, params, res, carry_bar, y_bar):
        da = (carry_bar + y_bar) * self._dact("activation")(res.s)
        return da @ params.W.T, da

    def _diagonal(self, params, res):
        return self._dact("activation")(res.s) * self._diag_w(params, 0)


@dataclasses.dataclass(frozen=True, repr=False)
class LSTM(_Recurrent):
    """The LSTM cell (selective write, read and forget).

    ``[i f g o] = x_t U + h_{t-1} W + b``; ``i, f, o = gate_activation(.)``,
    ``g = activation(.)``; ``c_t = f * c_{t-1} + i * g``; ``h_t = o * activation(c_t)``.

    Args:
      hidden_size: ``H``.
      activation: for the candidate ``g`` and for ``c_t`` in the output; ``jnp.tanh``.
      gate_activation: for the gates ``i``, ``f``, ``o``; ``jax.nn.sigmoid``.
      kernel_init, recurrent_init, bias_init: as in :class:`RNN`, applied per gate block.
      forget_bias: if given, ``init`` sets the forget-gate bias ``b_f`` to this constant
        (1.0 is the usual choice for long lags, Jozefowicz et al. 2015).
      use_bias, dtype, param_dtype: as in :class:`RNN`.

    Its params are :class:`CellParams` (``U`` ``[I, 4H]``, ``W``
    ``[H, 4H]``, ``b`` ``[4H]``, blocks ``(i, f, g, o)``) and carry
    :class:`LSTMCarry` ``(h, c)``; the output is ``h_t``.

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> cell = recurrax.LSTM(4, forget_bias=1.0)
      >>> cell, cell == recurrax.LSTM(4, forget_bias=1.0)
      (LSTM(hidden_size=4, forget_bias=1.0), True)
      >>> params = cell.init(jax.random.key(0), 2)
      >>> params.b[4:8].tolist()
      [1.0, 1.0, 1.0, 1.0]
    """

    gate_activation: Callable[[Array], Array] = jax.nn.sigmoid
    forget_bias: float | None = None

    num_blocks: ClassVar[int] = 4
    _in_loop_from_batch: ClassVar[float] = 8

    class Residual(NamedTuple):
        h_prev: Array
        c_prev: Array
        i: Array
        f: Array
        g: Array
        o: Array
        tanh_c: Array

    def _make_params(self, U, W, b, key):
        if self.forget_bias is not None and b is not None:
            H = self.hidden_size
            b = b.at[H : 2 * H].set(self.forget_bias)
        return CellParams(U, W, b)

    def initial_carry(self, batch_shape: tuple = (), dtype: Any = jnp.float32) -> LSTMCarry:
        """``LSTMCarry(h, c)``, zeros ``[*batch_shape, H]`` each."""
        zeros = jnp.zeros((*tuple(batch_shape), self.hidden_size), dtype)
        return LSTMCarry(zeros, zeros)

    def _forward(self, params, carry, v, joint):
        h, c = carry
        a = self._preactivation(params, v, h, joint)
        if self.gate_activation is jax.nn.sigmoid and self.activation is jnp.tanh:
            # sigmoid(a) = (tanh(a / 2) + 1) / 2: one tanh over all 4H pre-activations (the
            # i, f, o blocks halved) does the four activations; XLA:CPU runs that far faster
            # in the loop body than four sliced ones (benchmarks/HISTORY.md, "one tanh over all 4H gates").
            H = self.hidden_size
            half = jnp.concatenate([jnp.full(2 * H, 0.5), jnp.ones(H), jnp.full(H, 0.5)]).astype(a.dtype)
            i, f, g, o = jnp.split(jnp.tanh(a * _last(half, a)), 4, axis=-1)
            i, f, o = 0.5 * i + 0.5, 0.5 * f + 0.5, 0.5 * o + 0.5
        else:
            i, f, g, o = jnp.split(a, 4, axis=-1)
            sig = _sigmoid if self.gate_activation is jax.nn.sigmoid else self.gate_activation
            i, f, g, o = sig(i), sig(f), self.activation(g), sig(o)
        c_new = f * c + i * g
        tanh_c = self.activation(c_new)
        return LSTMCarry(o * tanh_c, c_new), LSTM.Residual(h, c, i, f, g, o, tanh_c)

    def _backward(self, params, res, carry_bar, y_bar):
        dact, dgate = self._dact("activation"), self._dact("gate_activation")
        h_bar = carry_bar.h + y_bar
        # h_t = o_t * tanh(c_t): the output gate, and the cell state through tanh
        c_bar = carry_bar.c + h_bar * res.o * dact(res.tanh_c)
        # c_t = f_t * c_{t-1} + i_t * g_t
        da = jnp.concatenate(
            [c_bar * res.g * dgate(res.i), c_bar * res.c_prev * dgate(res.f),
             c_bar * res.i * dact(res.g), h_bar * res.tanh_c * dgate(res.o)],
            axis=-1,
        )
        return LSTMCarry(da @ params.W.T, c_bar * res.f), da

    def _diagonal(self, params, res):
        dact, dgate, w = self._dact("activation"), self._dact("gate_activation"), self._diag_w
        dc = dgate(res.i) * w(params, 0) * res.g + dgate(res.f) * w(params, 1) * res.c_prev \
            + res.i * dact(res.g) * w(params, 2)
        dh = dgate(res.o) * w(params, 3) * res.tanh_c + res.o * dact(res.tanh_c) * dc
        return LSTMCarry(dh, res.f)


@dataclasses.dataclass(frozen=True, repr=False)
class GRU(_Recurrent):
    """The GRU cell: reset before the matmul by default, the cuDNN/PyTorch form on request.

    ``r = sig(x U_r + h W_r + b_r)`` (reset gate), ``z = sig(x U_z + h W_z + b_z)`` (update
    gate), ``h_t = (1 - z) * h_{t-1} + z * n_t`` with
    ``n_t = tanh(x U_n + (r * h_{t-1}) W_n + b_n)``, or with ``reset_after=True``
    ``n_t = tanh(x U_n + b_n + r * (h_{t-1} W_n + b_hn))``.

    Args:
      hidden_size: ``H``.
      reset_after: ``False`` (reset before the matmul, Cho et al. 2014) or ``True`` (reset
        after it, as cuDNN, PyTorch and Keras do; adds ``b_hn``). PyTorch's update gate is
        ``1 - z``: the converters negate that block.
      activation, gate_activation, kernel_init, recurrent_init, bias_init, use_bias, dtype,
        param_dtype: as in :class:`LSTM`.

    Its params are :class:`CellParams` (or :class:`GRUResetAfterParams`),
    blocks ``(r, z, n)``, and carry ``h`` ``[H]``; the output is ``h_t``.

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> cell = recurrax.GRU(4, reset_after=True)
      >>> params = cell.init(jax.random.key(0), 2)
      >>> type(params).__name__, params.W.shape, params.b_hn.shape
      ('GRUResetAfterParams', (4, 12), (4,))
    """

    gate_activation: Callable[[Array], Array] = jax.nn.sigmoid
    reset_after: bool = False

    num_blocks: ClassVar[int] = 3

    @property
    def _in_loop_from_batch(self) -> float:
        # The reset-after loop is slower on a slice of an up-front projection at any batch.
        return 1 if self.reset_after else 4

    class Residual(NamedTuple):
        h_prev: Array
        r: Array
        z: Array
        n: Array
        m: Array  # reset before: r * h_prev (the input of W_n); reset after: h_prev W_n + b_hn

    @property
    def _params_type(self):
        return GRUResetAfterParams if self.reset_after else CellParams

    def _make_params(self, U, W, b, key):
        if not self.reset_after:
            return CellParams(U, W, b)
        init = self.bias_init or uniform_init(1.0 / math.sqrt(self.hidden_size))
        b_hn = init(key, (self.hidden_size,), self.param_dtype) if self.use_bias else None
        return GRUResetAfterParams(U, W, b, b_hn)

    @property
    def _joint_product(self) -> bool:
        return not self.reset_after

    def _forward(self, params, h, v, joint):
        H = self.hidden_size
        sig = _sigmoid if self.gate_activation is jax.nn.sigmoid else self.gate_activation
        if self.reset_after:
            hw = h @ params.W
            a_x = add_bias(v, params.b)
            r, z = jnp.split(sig(a_x[..., : 2 * H] + hw[..., : 2 * H]), 2, axis=-1)
            m = add_bias(hw[..., 2 * H :], params.b_hn)
            n = self.activation(a_x[..., 2 * H :] + r * m)
        else:
            r, z = jnp.split(sig(self._preactivation(params, v, h, joint, 0, 2 * H)), 2, axis=-1)
            m = r * h
            n = self.activation(self._preactivation(params, v, m, joint, 2 * H))
        return h + z * (n - h), GRU.Residual(h, r, z, n, m)

    def _backward(self, params, res, carry_bar, y_bar):
        dact, dgate = self._dact("activation"), self._dact("gate_activation")
        H = self.hidden_size
        h_bar = carry_bar + y_bar
        # h_t = h_{t-1} + z_t * (n_t - h_{t-1})
        da_z = h_bar * (res.n - res.h_prev) * dgate(res.z)
        da_n = h_bar * res.z * dact(res.n)
        if self.reset_after:
            # n_t = tanh(a_n + r_t * m_t), m_t = h_{t-1} W_n + b_hn
            da_r = da_n * res.m * dgate(res.r)
            h_prev_bar = h_bar * (1 - res.z) + jnp.concatenate([da_r, da_z, da_n * res.r], -1) @ params.W.T
        else:
            # n_t = tanh(a_n + m_t W_n), m_t = r_t * h_{t-1}
            dm = da_n @ params.W[:, 2 * H :].T
            da_r = dm * res.h_prev * dgate(res.r)
            h_prev_bar = (h_bar * (1 - res.z) + dm * res.r
                          + jnp.concatenate([da_r, da_z], -1) @ params.W[:, : 2 * H].T)
        return h_prev_bar, jnp.concatenate([da_r, da_z, da_n], axis=-1)

    def _backward_params(self, params, res, da):
        H = self.hidden_size
        b_bar = None if params.b is None else _sum_rows(da)
        if self.reset_after:
            dm = da[..., 2 * H :] * res.r  # the cotangent of m = h W_n + b_hn
            W_bar = _sum_outer(res.h_prev, jnp.concatenate([da[..., : 2 * H], dm], -1))
            b_hn_bar = None if params.b_hn is None else _sum_rows(dm)
            return GRUResetAfterParams(jnp.zeros_like(params.U), W_bar, b_bar, b_hn_bar), da
        W_bar = jnp.concatenate([_sum_outer(res.h_prev, da[..., : 2 * H]), _sum_outer(res.m, da[..., 2 * H :])], -1)
        return CellParams(jnp.zeros_like(params.U), W_bar, b_bar), da

    def _diagonal(self, params, res):
        dact, dgate, w = self._dact("activation"), self._dact("gate_activation"), self._diag_w
        H = self.hidden_size
        if self.reset_after:  # n = tanh(. + r * m), m = h W_n + b_hn
            dn = dgate(res.r) * w(params, 0) * res.m + res.r * w(params, 2)
        else:  # n = tanh(. + (r * h) W_n): every r_j depends on h_i through W_r[i, j]
            W_r, W_n = params.W[:, :H], params.W[:, 2 * H :]
            dn = res.r * w(params, 2) + (res.h_prev * dgate(res.r)) @ (W_n * W_r.T)
        return 1 - res.z + dgate(res.z) * w(params, 1) * (res.n - res.h_prev) + res.z * dact(res.n) * dn


@dataclasses.dataclass(frozen=True, repr=False)
class _Min(_Dense):
    """minGRU / minLSTM: ``h_t = a_t * h_{t-1} + b_t`` with ``a_t``, ``b_t`` from ``x_t`` alone."""

    _params_type: ClassVar[type] = MinCellParams

    def init(self, key: PRNGKey, input_size: int) -> MinCellParams:
        """``MinCellParams`` (``U`` ``[input_size, k*H]``, ``b`` ``[k*H]``)."""
        check_positive_int("input_size", input_size)
        ku, kb = jax.random.split(key)
        b = self._blocks(self.bias_init, kb, ()) if self.use_bias else None
        return MinCellParams(self._blocks(self.kernel_init, ku, (input_size,)), b)

    def step(self, params: MinCellParams, h: Array, xu: Array) -> tuple[Array, Array]:
        """``h_t = a * h_{t-1} + b`` from ``xu = project(params, x)``."""
        self._check_carry(h, xu)
        a, b = self.linear_coefficients(params, xu)
        h = a * h + b
        return h, h

    def linear_coefficients(self, params: MinCellParams, xu: Array) -> tuple[Array, Array]:
        """``(a, b)`` ``[..., H]`` each with ``h_t = a * h_{t-1} + b``, from ``xu = project(params, x)``."""
        self._check_params(params)
        return self._coefficients(jnp.split(add_bias(xu, params.b), self.num_blocks, axis=-1))


@dataclasses.dataclass(frozen=True, repr=False)
class MinGRU(_Min):
    """minGRU (Feng et al. 2024): a GRU whose gates see only the input.

    ``z_t = sigmoid(x_t U_z + b_z)``, ``h~_t = x_t U_h + b_h``,
    ``h_t = (1 - z_t) * h_{t-1} + z_t * h~_t``.

    This is the paper's plain ("vanilla") version: no ``g(.)`` activation on ``h~`` and no
    log-space scan. Because ``0 < 1 - z_t < 1`` the associative scan over the pairs
    ``(1 - z_t, z_t h~_t)`` only ever multiplies numbers below one, so it needs no log
    space to stay finite. :func:`recurrax.parallel_scan` evaluates it exactly in one pass
    (through :meth:`MinGRU.linear_coefficients`); it is also an ordinary cell for
    :func:`recurrax.scan`, with the split form.

    Args:
      hidden_size: ``H``.
      kernel_init, bias_init: initializers ``(key, shape, dtype)`` applied per block;
        ``None`` means ``U(-1/sqrt(H), 1/sqrt(H))`` as for the other cells.
      use_bias: ``False`` gives ``params.b = None``.
      param_dtype: the dtype ``init`` creates parameters in.

    Its params are :class:`MinCellParams` (``U`` ``[I, 2H]``, ``b``
    ``[2H]``, blocks ``(z, h~)``) and carry ``h`` ``[H]``; the output is ``h_t``.

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> cell = recurrax.MinGRU(4)
      >>> params = cell.init(jax.random.key(0), 3)
      >>> h, y = cell.apply(params, cell.initial_carry((2,)), jnp.ones((2, 3)))
      >>> params.U.shape, y.shape
      ((3, 8), (2, 4))
    """

    num_blocks: ClassVar[int] = 2

    def _coefficients(self, blocks):
        z, h_tilde = blocks
        z = _sigmoid(z)
        return 1 - z, z * h_tilde


@dataclasses.dataclass(frozen=True, repr=False)
class MinLSTM(_Min):
    """minLSTM (Feng et al. 2024): an LSTM whose gates see only the input, normalised.

    ``f_t = sigmoid(x_t U_f + b_f)``, ``i_t = sigmoid(x_t U_i + b_i)``,
    ``h~_t = x_t U_h + b_h``, ``f'_t = f_t / (f_t + i_t)``, ``i'_t = i_t / (f_t + i_t)``,
    ``h_t = f'_t * h_{t-1} + i'_t * h~_t``.

    The paper's plain version with the time-independent normalisation of the gates
    (no ``g(.)``, no log space; see :class:`MinGRU` for why none is needed).

    Args:
      hidden_size, kernel_init, bias_init, use_bias, param_dtype: as in :class:`MinGRU`.

    Its params are :class:`MinCellParams` (``U`` ``[I, 3H]``, ``b``
    ``[3H]``, blocks ``(f, i, h~)``) and carry ``h`` ``[H]``; the output is ``h_t``.

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> cell = recurrax.MinLSTM(4)
      >>> params = cell.init(jax.random.key(0), 3)
      >>> xs = jnp.ones((10, 3))
      >>> h, ys, info = recurrax.parallel_scan(cell, params, xs)
      >>> bool(jnp.allclose(ys, recurrax.scan(cell, params, xs)[1], atol=1e-6)), int(info.iterations)
      (True, 1)
    """

    num_blocks: ClassVar[int] = 3

    def _coefficients(self, blocks):
        f, i, h_tilde = blocks
        f, i = _sigmoid(f), _sigmoid(i)
        return f / (f + i), i / (f + i) * h_tilde
