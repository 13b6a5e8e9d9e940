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

Options, off by default (docs/cells.md, "Variants")::

    LSTM, proj_size=P   h_t = (o * tanh(c_t)) @ W_hr        W [P, 4H], W_hr [H, P], h [P]
    LSTM, peephole      i, f = sig(a + p * c_{t-1}), o = sig(a_o + p_o * c_t)
    layer_norm          [pre-activations] = LN(x_t U) * gain_x + LN(h_{t-1} W) * gain_h + b
                        (LSTM: LN over all 4H; GRU: over (r, z) and n apart, after r * h when
                        reset before); LSTM: h_t = o * tanh(LN(c_t) * gain_c + b_c)

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
from recurrax._core._validate import check_bool, check_positive_int

Initializer = Callable[[PRNGKey, tuple, Any], Array]


class CellParams(NamedTuple):
    """Parameters of the RNN, LSTM and (reset-before) GRU cells.

    The fields after ``b`` belong to optional features that are off by default and are
    ``None`` unless the cell was built with that feature (``CellParams(U, W, b)`` is the
    plain cells' params). ``P`` is the LSTM's ``proj_size`` (``H`` without it).

    Attributes:
      U: ``[input_size, k*H]`` input weights.
      W: ``[H, k*H]`` recurrent weights (``[P, 4H]`` for ``LSTM(proj_size=P)``).
      b: ``[k*H]`` bias, or ``None`` for a cell built with ``use_bias=False``.
      W_hr: ``[H, P]`` projection of ``LSTM(proj_size=P)``: ``h_t = (o_t * tanh(c_t)) @ W_hr``.
      peephole: ``[3H]`` diagonal peephole weights of ``LSTM(peephole=True)``, blocks
        ``(i, f, o)``.
      gain_x: ``[k*H]`` gain of the layer norm of ``x_t U`` (``layer_norm=True``).
      gain_h: ``[k*H]`` gain of the layer norm of the recurrent pre-activations.
      gain_c: ``[H]`` gain of the layer norm of the LSTM's ``c_t`` (``LSTM(layer_norm=True)``).
      b_c: ``[H]`` bias of that layer norm, or ``None`` with ``use_bias=False``.

    Example:
      >>> import jax, recurrax
      >>> p = recurrax.LSTM(4, proj_size=2).init(jax.random.key(0), 3)
      >>> p.U.shape, p.W.shape, p.W_hr.shape, p.peephole
      ((3, 16), (2, 16), (4, 2), None)
    """

    U: Array
    W: Array
    b: Array | None
    W_hr: Array | None = None
    peephole: Array | None = None
    gain_x: Array | None = None
    gain_h: Array | None = None
    gain_c: Array | None = None
    b_c: Array | None = None


class GRUResetAfterParams(NamedTuple):
    """Parameters of the reset-after GRU: :class:`CellParams` plus ``b_hn`` ``[H]``.

    ``b_hn`` is the bias inside the reset product, ``r * (h W_n + b_hn)`` (PyTorch's
    ``bias_hh`` for the n gate). ``gain_x`` and ``gain_h`` (``[3H]`` each) are those of
    :class:`CellParams`, set only for ``GRU(H, reset_after=True, layer_norm=True)``.
    """

    U: Array
    W: Array
    b: Array | None
    b_hn: Array | None
    gain_x: Array | None = None
    gain_h: Array | None = None


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


# The layer norms' epsilon (PyTorch's LayerNorm default).
_LN_EPS = 1e-5


def _stats_dtype(dtype: Any) -> Any:
    """float32 for a half-precision ``dtype``, else ``dtype``: the layer norms' statistics and
    their backward subtract means, which cancel in bfloat16 (as PyTorch's autocast, which
    runs layer norm in float32)."""
    return jnp.float32 if jnp.finfo(dtype).bits < 32 else dtype


def _normalize(v: Array) -> tuple[Array, Array]:
    """Layer norm without gain over the last axis: ``(v_hat, rstd)``, ``rstd`` ``[..., 1]``,
    computed in at least float32 and returned in ``v``'s dtype."""
    w = v.astype(_stats_dtype(v.dtype))
    d = w - jnp.mean(w, -1, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.mean(d * d, -1, keepdims=True) + _LN_EPS)
    return (d * rstd).astype(v.dtype), rstd.astype(v.dtype)


def _normalize_bwd(v_hat_bar: Array, v_hat: Array, rstd: Array) -> Array:
    """The cotangent of ``v`` from that of ``v_hat = _normalize(v)[0]`` (exact, epsilon included),
    computed in at least float32."""
    acc = _stats_dtype(v_hat_bar.dtype)
    g, h, r = (a.astype(acc) for a in (v_hat_bar, v_hat, rstd))
    mean = lambda a: jnp.mean(a, -1, keepdims=True)  # noqa: E731
    return (r * (g - mean(g) - h * mean(g * h))).astype(v_hat_bar.dtype)


def _ln_rows(W: Array, hat: Array, rstd: Array, gain: Array) -> tuple[Array, Array, Array]:
    """The Jacobian of ``out = _normalize(h @ W)[0] * gain`` by rows: ``(G, w, s)`` with
    ``d out[..., col] / d h[..., j] = G[..., col] * (W[j, col] - w[..., j] - hat[..., col] * s[..., j])``
    (``w`` the row means of ``W``, ``s = hat @ W.T / cols``), for Jacobian diagonals at about one step's cost."""
    s = hat @ W.T / W.shape[1]
    return _last(gain, hat) * rstd, _last(W.mean(1), s), s


def _ln_through(v: Array, W: Array, G: Array, w: Array, s: Array, hat: Array) -> Array:
    """``sum_col v[..., col] * d out[..., col] / d h[..., j]`` for the rows of :func:`_ln_rows`."""
    vG = v * G
    total = lambda a: jnp.sum(a, -1, keepdims=True)  # noqa: E731
    return vG @ W.T - w * total(vG) - s * total(vG * hat)


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
        rows = self._carry_widths()[0]  # W maps the carried output h
        # The optional features' fields: set with this shape, or None when the feature is off
        # (b_c, like b, may also be None).
        extras = self._extra_fields()
        wrong_extra = [name for name, shape in extras if (getattr(params, name, None) is None) != (shape is None)
                       and not (name == "b_c" and params.b_c is None)
                       or shape is not None and getattr(params, name, None) is not None
                       and jnp.shape(getattr(params, name)) != shape]
        if (not isinstance(params, self._params_type) or U is None or U.ndim != 2 or U.shape[1] != k * H
                or (want_W and (W is None or W.shape != (rows, k * H))) or wrong_extra):
            got = jax.tree.map(jnp.shape, params) if isinstance(params, tuple) else type(params).__name__
            expected = f"U [input_size, {k * H}]" + (f" and W [{rows}, {k * H}]" if want_W else "")
            expected += "".join(f", {name} {list(shape)}" for name, shape in extras if shape is not None)
            unset = [name for name, shape in extras if shape is None]
            expected += f" ({', '.join(unset)} None)" if unset else ""
            raise ValueError(
                f"params do not fit {self!r}: expected {self._params_type.__name__} with {expected}; "
                f"got {got}. Create them with this cell's init(key, input_size)."
            )

    def _extra_fields(self) -> list:
        """The params fields of optional features: ``(name, shape)``, ``shape`` ``None`` when off."""
        return []

    def _carry_widths(self) -> tuple:
        """The last dimension of each carry leaf."""
        return (self.hidden_size,)

    def _check_carry(self, carry, xu):
        leaves, widths = jax.tree.leaves(carry), self._carry_widths()
        for leaf, width in zip(leaves, widths * len(leaves) if len(widths) == 1 else widths):
            if leaf.shape != (*xu.shape[:-1], width):
                raise ValueError(
                    f"the carry must be [*batch, {width}] with the batch dimensions of x "
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
        W = self._blocks(self.recurrent_init, kw, (self._carry_widths()[0],))
        b = self._blocks(self.bias_init, kb, ()) if self.use_bias else None
        return self._make_params(U, W, b, kx)

    def _make_params(self, U, W, b, key):
        return CellParams(U, W, b, **self._layer_norm_params())

    def _layer_norm_params(self) -> dict:
        """The layer norms' gains (ones), for a cell built with ``layer_norm=True``."""
        if not getattr(self, "layer_norm", False):
            return {}
        ones = jnp.ones(self.num_blocks * self.hidden_size, self.param_dtype)
        return {"gain_x": ones, "gain_h": ones}

    def project(self, params: Params, xs: Array) -> Array:
        """The split form's input work: ``xs @ U`` ``[..., k*H]`` for ``xs`` ``[..., input_size]``.

        With ``layer_norm=True``, the layer norm of ``xs @ U`` times ``gain_x`` (it depends
        on ``x`` alone). The bias is added in :meth:`step`: adding it to the whole
        ``[T, ..., k*H]`` projection made XLA:CPU's loop slower (benchmarks/HISTORY.md, "bias added per step").
        """
        xu = super().project(params, xs)
        if not getattr(self, "layer_norm", False):
            return xu
        return self._norm_groups(xu)[0] * _last(params.gain_x.astype(xu.dtype), xu)

    def _norm_groups(self, v: Array) -> tuple[Array, Array]:
        """``_normalize`` of each group of columns of ``v`` (:attr:`_norm_sizes`): ``(v_hat, rstd [..., groups])``."""
        parts = [_normalize(part) for part in jnp.split(v, np.cumsum(self._norm_sizes)[:-1].tolist(), axis=-1)]
        return jnp.concatenate([p[0] for p in parts], -1), jnp.concatenate([p[1] for p in parts], -1)

    def _norm_groups_bwd(self, v_hat_bar: Array, v_hat: Array, rstd: Array) -> Array:
        cuts = np.cumsum(self._norm_sizes)[:-1].tolist()
        parts = zip(jnp.split(v_hat_bar, cuts, -1), jnp.split(v_hat, cuts, -1), jnp.split(rstd, len(cuts) + 1, -1))
        return jnp.concatenate([_normalize_bwd(*part) for part in parts], -1)

    @property
    def _norm_sizes(self) -> tuple:
        """The column groups each layer norm of ``x U`` and ``h W`` normalises over: all ``k*H``."""
        return (self.num_blocks * self.hidden_size,)

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

    def _diag_w(self, params, k, like):
        """The diagonal of ``W``'s block ``k``, broadcast against ``like`` ``[*batch, H]``."""
        H = self.hidden_size
        return _last(jnp.diagonal(params.W[:, k * H : (k + 1) * H]), like)

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
        return self._dact("activation")(res.s) * self._diag_w(params, 0, res.s)


@dataclasses.dataclass(frozen=True, repr=False)
class LSTM(_Recurrent):
    """The LSTM cell (selective write, read and forget), with PyTorch's projection, peepholes
    and layer normalisation as options.

    ``[i f g o] = x_t U + h_{t-1} W + b``; ``i, f, o = gate_activation(.)``,
    ``g = activation(.)``; ``c_t = f * c_{t-1} + i * g``; ``h_t = o * activation(c_t)``.
    The options change it so (``a_i`` etc. are the pre-activation blocks; docs/cells.md has
    the full equations)::

        proj_size=P      h_t = (o * tanh(c_t)) @ W_hr                     h is [P], c is [H]
        peephole=True    i = sig(a_i + p_i * c_{t-1}), f = sig(a_f + p_f * c_{t-1}),
                         o = sig(a_o + p_o * c_t)
        layer_norm=True  [i f g o] = LN(x_t U) * gain_x + LN(h_{t-1} W) * gain_h + b,
                         h_t = o * tanh(LN(c_t) * gain_c + b_c)

    ``LN(v) = (v - mean(v)) / sqrt(var(v) + 1e-5)`` over all ``4H`` pre-activations of one
    side (Ba et al. 2016); the carried ``c_t`` is not normalised. ``proj_size`` combines
    with either of the others; ``peephole`` with ``layer_norm`` is refused (no reference
    formulation says which ``c_t`` the output gate would see).

    Args:
      hidden_size: ``H``.
      activation: for the candidate ``g`` and for ``c_t`` in the output; ``jnp.tanh``.
      gate_activation: for the gates ``i``, ``f``, ``o``; ``jax.nn.sigmoid``.
      kernel_init, recurrent_init, bias_init: as in :class:`RNN`, applied per gate block
        (``recurrent_init`` also to ``W_hr``).
      forget_bias: if given, ``init`` sets the forget-gate bias ``b_f`` to this constant
        (1.0 is the usual choice for long lags, Jozefowicz et al. 2015).
      proj_size: ``P``, PyTorch's LSTMP (Sak et al. 2014): the output and the carried ``h``
        are ``(o * tanh(c_t)) @ W_hr``, of size ``P``; ``None`` for none.
      peephole: the gates also see the cell state through diagonal weights (Gers &
        Schmidhuber 2000), initialised like the biases.
      layer_norm: layer-normalise the input and recurrent pre-activations and ``c_t`` (Ba
        et al. 2016); gains start at 1, ``b_c`` at 0.
      use_bias, dtype, param_dtype: as in :class:`RNN`.

    Its params are :class:`CellParams` (``U`` ``[I, 4H]``, ``W`` ``[P, 4H]``, ``b`` ``[4H]``,
    blocks ``(i, f, g, o)``; ``W_hr`` ``[H, P]``, ``peephole`` ``[3H]`` and ``gain_x``,
    ``gain_h``, ``gain_c``, ``b_c`` when their option is on) and carry :class:`LSTMCarry`
    ``(h, c)``, ``h`` ``[P]`` (``P = H`` without ``proj_size``) and ``c`` ``[H]``; the output
    is ``h_t``. Every option keeps every capability: the split form (with ``layer_norm``,
    :meth:`project` normalises ``x U``), the hand-derived backward and the Jacobian diagonal.

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> cell = recurrax.LSTM(4, forget_bias=1.0)
      >>> cell, cell == recurrax.LSTM(4, forget_bias=1.0)
      (LSTM(hidden_size=4, forget_bias=1.0), True)
      >>> params = cell.init(jax.random.key(0), 2)
      >>> params.b[4:8].tolist()
      [1.0, 1.0, 1.0, 1.0]
      >>> lstmp = recurrax.LSTM(4, proj_size=2, peephole=True)
      >>> carry, y = recurrax.scan(lstmp, lstmp.init(jax.random.key(0), 3), jnp.ones((5, 3)))
      >>> y.shape, carry.h.shape, carry.c.shape
      ((5, 2), (2,), (4,))
      >>> ln = recurrax.LSTM(4, layer_norm=True)
      >>> isinstance(ln, recurrax.HandBackward), isinstance(ln, recurrax.JacobianDiagonal)
      (True, True)
    """

    gate_activation: Callable[[Array], Array] = jax.nn.sigmoid
    forget_bias: float | None = None
    proj_size: int | None = None
    peephole: bool = False
    layer_norm: bool = False

    num_blocks: ClassVar[int] = 4
    _in_loop_from_batch: ClassVar[float] = 8

    def __post_init__(self):
        super().__post_init__()
        if self.proj_size is not None:
            check_positive_int("proj_size", self.proj_size)
        check_bool("peephole", self.peephole)
        check_bool("layer_norm", self.layer_norm)
        if self.peephole and self.layer_norm:
            raise ValueError(
                "LSTM(peephole=True, layer_norm=True) is not supported: Ba et al.'s layer-normalised "
                "LSTM has no peepholes, and whether the output gate would see c_t or its layer norm is "
                "a guess. Use one of the two (proj_size combines with either)."
            )

    class Residual(NamedTuple):
        h_prev: Array
        c_prev: Array
        i: Array
        f: Array
        g: Array
        o: Array
        tanh_c: Array  # activation(c_t), or of the layer-normed c_t
        hw_hat: Array | None = None  # layer_norm: the normalised h_{t-1} W and its 1/std
        hw_rstd: Array | None = None
        c_hat: Array | None = None  # layer_norm: the normalised c_t and its 1/std
        c_rstd: Array | None = None

    class Cotangent(NamedTuple):
        """``step_bwd``'s per-step cotangents ``d``: of the pre-activations, and what only the options need."""

        da: Array  # of [a_i a_f a_g a_o] (peephole terms included): project's output and b
        hw_bar: Array | None = None  # layer_norm: of h_{t-1} W before its layer norm
        h_bar: Array | None = None  # proj_size: of h_t
        t_bar: Array | None = None  # layer_norm: of LN(c_t) * gain_c + b_c

    @property
    def _joint_product(self) -> bool:
        return not self.layer_norm  # x U and h W are normalised apart

    def _carry_widths(self) -> tuple:
        return (self.proj_size or self.hidden_size, self.hidden_size)

    def _extra_fields(self) -> list:
        H, P = self.hidden_size, self.proj_size
        ln = self.layer_norm
        return [("W_hr", (H, P) if P else None), ("peephole", (3 * H,) if self.peephole else None),
                ("gain_x", (4 * H,) if ln else None), ("gain_h", (4 * H,) if ln else None),
                ("gain_c", (H,) if ln else None), ("b_c", (H,) if ln else None)]

    def _make_params(self, U, W, b, key):
        H, dtype = self.hidden_size, self.param_dtype
        if self.forget_bias is not None and b is not None:
            b = b.at[H : 2 * H].set(self.forget_bias)
        extra = self._layer_norm_params()
        if self.layer_norm:
            extra.update(gain_c=jnp.ones(H, dtype), b_c=jnp.zeros(H, dtype) if self.use_bias else None)
        k_hr, k_peep = jax.random.split(key)
        default = uniform_init(1.0 / math.sqrt(H))
        if self.proj_size:
            extra["W_hr"] = (self.recurrent_init or default)(k_hr, (H, self.proj_size), dtype)
        if self.peephole:
            keys = jax.random.split(k_peep, 3)
            extra["peephole"] = jnp.concatenate([(self.bias_init or default)(k, (H,), dtype) for k in keys])
        return CellParams(U, W, b, **extra)

    def initial_carry(self, batch_shape: tuple = (), dtype: Any = jnp.float32) -> LSTMCarry:
        """``LSTMCarry(h, c)``, zeros ``[*batch_shape, P]`` and ``[*batch_shape, H]``."""
        h, c = (jnp.zeros((*tuple(batch_shape), n), dtype) for n in self._carry_widths())
        return LSTMCarry(h, c)

    def _gates(self, a, kinds: str):
        """The activations of the pre-activation blocks ``a`` of ``kinds`` (``"g"`` the candidate, others gates)."""
        H = self.hidden_size
        if self.gate_activation is jax.nn.sigmoid and self.activation is jnp.tanh:
            # sigmoid(a) = (tanh(a / 2) + 1) / 2: one tanh over all the blocks (the gates
            # halved) does every activation; XLA:CPU runs that far faster in the loop body
            # than one per block (benchmarks/HISTORY.md, "one tanh over all 4H gates").
            half = np.concatenate([np.full(H, 1.0 if k == "g" else 0.5) for k in kinds]).astype(a.dtype)  # a constant
            blocks = jnp.split(jnp.tanh(a * _last(half, a)), len(kinds), axis=-1)
            return [v if k == "g" else 0.5 * v + 0.5 for k, v in zip(kinds, blocks)]
        sig = _sigmoid if self.gate_activation is jax.nn.sigmoid else self.gate_activation
        return [(self.activation if k == "g" else sig)(v) for k, v in zip(kinds, jnp.split(a, len(kinds), axis=-1))]

    def _forward(self, params, carry, v, joint):
        h, c = carry
        H = self.hidden_size
        hw_hat = hw_rstd = c_hat = c_rstd = None
        if self.layer_norm:  # v is project's layer-normed x U; never joint
            hw_hat, hw_rstd = _normalize(h @ params.W)
            a = add_bias(v, params.b) + hw_hat * _last(params.gain_h, hw_hat)
        else:
            a = self._preactivation(params, v, h, joint)
        if self.peephole:
            p_i, p_f, p_o = (_last(p, c) for p in jnp.split(params.peephole, 3))
            i, f, g = self._gates(a[..., : 3 * H] + jnp.concatenate([p_i * c, p_f * c, jnp.zeros_like(c)], -1), "ifg")
            c_new = f * c + i * g
            (o,) = self._gates(a[..., 3 * H :] + p_o * c_new, "o")
        else:
            i, f, g, o = self._gates(a, "ifgo")
            c_new = f * c + i * g
        if self.layer_norm:
            c_hat, c_rstd = _normalize(c_new)
            tanh_c = self.activation(add_bias(c_hat * _last(params.gain_c, c_hat), params.b_c))
        else:
            tanh_c = self.activation(c_new)
        h_new = o * tanh_c
        if self.proj_size:
            h_new = h_new @ params.W_hr
        return LSTMCarry(h_new, c_new), LSTM.Residual(h, c, i, f, g, o, tanh_c, hw_hat, hw_rstd, c_hat, c_rstd)

    def _backward(self, params, res, carry_bar, y_bar):
        dact, dgate = self._dact("activation"), self._dact("gate_activation")
        H = self.hidden_size
        h_bar = carry_bar.h + y_bar
        m_bar = h_bar @ params.W_hr.T if self.proj_size else h_bar  # of o * tanh(c_t)
        da_o = m_bar * res.tanh_c * dgate(res.o)
        # h_t = o_t * tanh(c_t): the output gate, and the cell state through tanh (and its layer norm)
        t_bar = m_bar * res.o * dact(res.tanh_c)
        c_bar = carry_bar.c + (_normalize_bwd(t_bar * _last(params.gain_c, t_bar), res.c_hat, res.c_rstd)
                               if self.layer_norm else t_bar)
        if self.peephole:  # o = sig(a_o + p_o * c_t)
            c_bar = c_bar + da_o * _last(params.peephole[2 * H :], da_o)
        # c_t = f_t * c_{t-1} + i_t * g_t
        da_i, da_f = c_bar * res.g * dgate(res.i), c_bar * res.c_prev * dgate(res.f)
        da = jnp.concatenate([da_i, da_f, c_bar * res.i * dact(res.g), da_o], axis=-1)
        c_prev_bar = c_bar * res.f
        if self.peephole:  # i, f = sig(a_i + p_i * c_{t-1}), sig(a_f + p_f * c_{t-1})
            p_i, p_f = (_last(p, da_i) for p in jnp.split(params.peephole[: 2 * H], 2))
            c_prev_bar = c_prev_bar + da_i * p_i + da_f * p_f
        hw_bar = _normalize_bwd(da * _last(params.gain_h, da), res.hw_hat, res.hw_rstd) if self.layer_norm else None
        d = LSTM.Cotangent(da, hw_bar, h_bar if self.proj_size else None, t_bar if self.layer_norm else None)
        return LSTMCarry((da if hw_bar is None else hw_bar) @ params.W.T, c_prev_bar), d

    def _backward_params(self, params, res, d):
        H = self.hidden_size
        da = d.da
        grads = {"U": jnp.zeros_like(params.U), "W": _sum_outer(res.h_prev, da if d.hw_bar is None else d.hw_bar),
                 "b": None if params.b is None else _sum_rows(da)}
        if self.proj_size:
            grads["W_hr"] = _sum_outer(res.o * res.tanh_c, d.h_bar)
        if self.peephole:
            c_new = res.f * res.c_prev + res.i * res.g
            grads["peephole"] = jnp.concatenate([_sum_rows(da[..., :H] * res.c_prev),
                                                 _sum_rows(da[..., H : 2 * H] * res.c_prev),
                                                 _sum_rows(da[..., 3 * H :] * c_new)])
        if self.layer_norm:
            grads.update(gain_x=jnp.zeros_like(params.gain_x), gain_h=_sum_rows(da * res.hw_hat),
                         gain_c=_sum_rows(d.t_bar * res.c_hat),
                         b_c=None if params.b_c is None else _sum_rows(d.t_bar))
        return params._replace(**grads), da

    def _diagonal(self, params, res):
        dact, dgate = self._dact("activation"), self._dact("gate_activation")
        H, W = self.hidden_size, params.W
        # c_t = f * c_{t-1} + i * g: d c_t / d(a_i, a_f, a_g), unit by unit
        dc_da = [dgate(res.i) * res.g, dgate(res.f) * res.c_prev, res.i * dact(res.g)]
        dc_dc = res.f  # c_{t-1} reaches c_t[j] through unit j alone, peepholes included
        dm_dc = res.o * dact(res.tanh_c)  # m = o * tanh(c_t) (or of its layer norm)
        dm_dao = dgate(res.o) * res.tanh_c
        if self.peephole:
            p_i, p_f, p_o = (_last(p, res.f) for p in jnp.split(params.peephole, 3))
            dc_dc = dc_dc + dc_da[0] * p_i + dc_da[1] * p_f
            dm_dc = dm_dc + dm_dao * p_o
        # h_t[j] = sum_k m_k Y[k, j] (Y = W_hr, or the identity): `out` applies Y; `mix_w(v)`
        # is sum_col v_col W[j, col] Y[col mod H, j] and `mix(v)` sum_col v_col Y[col mod H, j]
        out = (lambda v: v @ params.W_hr) if self.proj_size else (lambda v: v)
        mix = lambda v: out(sum(jnp.split(v, 4, axis=-1)))  # noqa: E731
        if self.proj_size:
            mix_w = lambda v: v @ (W * jnp.tile(params.W_hr.T, 4)).T  # noqa: E731
        else:
            mix_w = lambda v: sum(b * self._diag_w(params, q, b) for q, b in enumerate(jnp.split(v, 4, axis=-1)))  # noqa
        if not self.layer_norm:  # d a / d h_{t-1} = W
            return LSTMCarry(mix_w(jnp.concatenate([dm_dc * k for k in dc_da] + [dm_dao], -1)), dc_dc)
        # a = ... + LN(h W) * gain_h: d a_col / d h_j = G_col (W[j, col] - w_j - hat_col s_j)
        G, w, s = _ln_rows(W, res.hw_hat, res.hw_rstd, params.gain_h)
        through_all = lambda v: _ln_through(v, W, G, w, s, res.hw_hat)  # noqa: E731  # sum_col v_col d a_col / d h_j
        through_out = lambda v: mix_w(v * G) - w * mix(v * G) - s * mix(v * G * res.hw_hat)  # noqa: E731
        # tanh(LN(c_t) * gain_c + b_c): d LN(c)_k / d c_l = rstd_c (delta_kl - 1/H - c_hat_k c_hat_l / H),
        # so each h_j also sees the mean over l of d c_l / d h_j and of c_hat_l d c_l / d h_j
        bg = dm_dc * _last(params.gain_c, dm_dc) * res.c_rstd
        pad = lambda v: jnp.concatenate([v, jnp.zeros_like(res.o)], -1)  # noqa: E731  # (a_o does not reach c_t)
        mean_dc = through_all(pad(jnp.concatenate(dc_da, -1))) / H
        mean_cdc = through_all(pad(jnp.concatenate([k * res.c_hat for k in dc_da], -1))) / H
        dh = through_out(jnp.concatenate([bg * k for k in dc_da] + [dm_dao], -1)) - mean_dc * out(bg) \
            - mean_cdc * out(bg * res.c_hat)
        return LSTMCarry(dh, dc_dc)


@dataclasses.dataclass(frozen=True, repr=False)
class GRU(_Recurrent):
    """The GRU cell: reset before the matmul by default, the cuDNN/PyTorch form on request.

    ``r = sig(x U_r + h W_r + b_r)`` (reset gate), ``z = sig(x U_z + h W_z + b_z)`` (update
    gate), ``h_t = (1 - z) * h_{t-1} + z * n_t`` with
    ``n_t = tanh(x U_n + (r * h_{t-1}) W_n + b_n)``, or with ``reset_after=True``
    ``n_t = tanh(x U_n + b_n + r * (h_{t-1} W_n + b_hn))``.

    With ``layer_norm=True`` (Ba et al. 2016) each of the products ``x U``, ``h W_rz`` and
    ``h W_n`` (reset after) or ``(r * h) W_n`` (reset before) is layer-normalised times a
    gain before the bias is added, over the columns of the ``(r, z)`` blocks and of the
    ``n`` block apart (as in the paper's authors' layer-norm GRU), e.g. reset after::

        [r z] = sig(LN(x U_rz) * gain_x,rz + LN(h W_rz) * gain_h,rz + b_rz)
        n_t = tanh(LN(x U_n) * gain_x,n + b_n + r * (LN(h W_n) * gain_h,n + b_hn))

    Args:
      hidden_size: ``H``.
      reset_after: ``False`` (reset before the matmul, Cho et al. 2014) or ``True`` (reset
        after it, as cuDNN, PyTorch and Keras do; adds ``b_hn``). PyTorch's update gate is
        ``1 - z``: the converters negate that block.
      layer_norm: layer-normalise the pre-activations as above; the gains ``gain_x``,
        ``gain_h`` (``[3H]`` each, in the params) start at 1.
      activation, gate_activation, kernel_init, recurrent_init, bias_init, use_bias, dtype,
        param_dtype: as in :class:`LSTM`.

    Its params are :class:`CellParams` (or :class:`GRUResetAfterParams`),
    blocks ``(r, z, n)``, and carry ``h`` ``[H]``; the output is ``h_t``. With
    ``layer_norm`` it keeps every capability (:meth:`project` normalises ``x U``).

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> cell = recurrax.GRU(4, reset_after=True)
      >>> params = cell.init(jax.random.key(0), 2)
      >>> type(params).__name__, params.W.shape, params.b_hn.shape
      ('GRUResetAfterParams', (4, 12), (4,))
      >>> ln = recurrax.GRU(4, layer_norm=True)
      >>> ln.init(jax.random.key(0), 2).gain_h.tolist()
      [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    """

    gate_activation: Callable[[Array], Array] = jax.nn.sigmoid
    reset_after: bool = False
    layer_norm: bool = False

    num_blocks: ClassVar[int] = 3

    def __post_init__(self):
        super().__post_init__()
        check_bool("layer_norm", self.layer_norm)

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
        hw_hat: Array | None = None  # layer_norm: the normalised h-side products ((r, z), n) and 1/std [*, 2]
        hw_rstd: Array | None = None

    class Cotangent(NamedTuple):
        """``step_bwd``'s per-step cotangents ``d``."""

        da: Array  # of the pre-activations [a_r a_z a_n]: project's output and b
        hw_bar: Array | None = None  # layer_norm: of the h-side products before their layer norms

    @property
    def _params_type(self):
        return GRUResetAfterParams if self.reset_after else CellParams

    def _make_params(self, U, W, b, key):
        if not self.reset_after:
            return CellParams(U, W, b, **self._layer_norm_params())
        init = self.bias_init or uniform_init(1.0 / math.sqrt(self.hidden_size))
        b_hn = init(key, (self.hidden_size,), self.param_dtype) if self.use_bias else None
        return GRUResetAfterParams(U, W, b, b_hn, **self._layer_norm_params())

    def _extra_fields(self) -> list:
        shape = (3 * self.hidden_size,) if self.layer_norm else None
        return [("gain_x", shape), ("gain_h", shape)]

    @property
    def _norm_sizes(self) -> tuple:
        return (2 * self.hidden_size, self.hidden_size)

    @property
    def _joint_product(self) -> bool:
        return not (self.reset_after or self.layer_norm)

    def _forward(self, params, h, v, joint):
        H = self.hidden_size
        sig = _sigmoid if self.gate_activation is jax.nn.sigmoid else self.gate_activation
        hw_hat = hw_rstd = None
        if self.reset_after:
            hw = h @ params.W
            if self.layer_norm:
                hw_hat, hw_rstd = self._norm_groups(hw)
                hw = hw_hat * _last(params.gain_h, hw_hat)
            a_x = add_bias(v, params.b)
            r, z = jnp.split(sig(a_x[..., : 2 * H] + hw[..., : 2 * H]), 2, axis=-1)
            m = add_bias(hw[..., 2 * H :], params.b_hn)
            n = self.activation(a_x[..., 2 * H :] + r * m)
        elif self.layer_norm:  # v is project's layer-normed x U; (r * h) W_n is normalised after r
            a_x = add_bias(v, params.b)
            hat_rz, rstd_rz = _normalize(h @ params.W[:, : 2 * H])
            r, z = jnp.split(sig(a_x[..., : 2 * H] + hat_rz * _last(params.gain_h[: 2 * H], hat_rz)), 2, axis=-1)
            m = r * h
            hat_n, rstd_n = _normalize(m @ params.W[:, 2 * H :])
            n = self.activation(a_x[..., 2 * H :] + hat_n * _last(params.gain_h[2 * H :], hat_n))
            hw_hat, hw_rstd = jnp.concatenate([hat_rz, hat_n], -1), jnp.concatenate([rstd_rz, rstd_n], -1)
        else:
            r, z = jnp.split(sig(self._preactivation(params, v, h, joint, 0, 2 * H)), 2, axis=-1)
            m = r * h
            n = self.activation(self._preactivation(params, v, m, joint, 2 * H))
        return h + z * (n - h), GRU.Residual(h, r, z, n, m, hw_hat, hw_rstd)

    def _backward(self, params, res, carry_bar, y_bar):
        dact, dgate = self._dact("activation"), self._dact("gate_activation")
        H = self.hidden_size
        h_bar = carry_bar + y_bar
        # h_t = h_{t-1} + z_t * (n_t - h_{t-1})
        da_z = h_bar * (res.n - res.h_prev) * dgate(res.z)
        da_n = h_bar * res.z * dact(res.n)
        ln = self.layer_norm
        gain = lambda lo, hi: _last(params.gain_h[lo:hi], h_bar)  # noqa: E731
        if self.reset_after:
            # n_t = tanh(a_n + r_t * m_t), m_t = h_{t-1} W_n + b_hn (or LN(h_{t-1} W_n) * gain + b_hn)
            da_r = da_n * res.m * dgate(res.r)
            hw_bar = jnp.concatenate([da_r, da_z, da_n * res.r], -1)
            if ln:
                hw_bar = self._norm_groups_bwd(hw_bar * _last(params.gain_h, hw_bar), res.hw_hat, res.hw_rstd)
            h_prev_bar = h_bar * (1 - res.z) + hw_bar @ params.W.T
        else:
            # n_t = tanh(a_n + q_t), q_t = m_t W_n (or its layer norm times the gain), m_t = r_t * h_{t-1}
            q_bar = _normalize_bwd(da_n * gain(2 * H, None), res.hw_hat[..., 2 * H :], res.hw_rstd[..., 1:]) \
                if ln else da_n
            dm = q_bar @ params.W[:, 2 * H :].T
            da_r = dm * res.h_prev * dgate(res.r)
            rz_bar = jnp.concatenate([da_r, da_z], -1)
            if ln:
                rz_bar = _normalize_bwd(rz_bar * gain(0, 2 * H), res.hw_hat[..., : 2 * H], res.hw_rstd[..., :1])
            h_prev_bar = h_bar * (1 - res.z) + dm * res.r + rz_bar @ params.W[:, : 2 * H].T
            hw_bar = jnp.concatenate([rz_bar, q_bar], -1) if ln else None
        d = GRU.Cotangent(jnp.concatenate([da_r, da_z, da_n], axis=-1), hw_bar if ln else None)
        return h_prev_bar, d

    def _backward_params(self, params, res, d):
        H = self.hidden_size
        da = d.da
        # the cotangent of the h side's terms after any layer norm: that of (h W_rz, m) reset
        # after (m = h W_n + b_hn), of (h W_rz, (r * h) W_n) reset before
        dm = da[..., 2 * H :] * res.r if self.reset_after else None  # of m (reset after)
        out_bar = jnp.concatenate([da[..., : 2 * H], dm], -1) if self.reset_after else da
        hw_bar = out_bar if d.hw_bar is None else d.hw_bar  # and before it
        grads = {"U": jnp.zeros_like(params.U), "b": None if params.b is None else _sum_rows(da)}
        if self.reset_after:
            grads["W"] = _sum_outer(res.h_prev, hw_bar)
            grads["b_hn"] = None if params.b_hn is None else _sum_rows(dm)
        else:
            grads["W"] = jnp.concatenate([_sum_outer(res.h_prev, hw_bar[..., : 2 * H]),
                                          _sum_outer(res.m, hw_bar[..., 2 * H :])], -1)
        if self.layer_norm:
            grads.update(gain_x=jnp.zeros_like(params.gain_x), gain_h=_sum_rows(out_bar * res.hw_hat))
        return params._replace(**grads), da

    def _diagonal(self, params, res):
        dact, dgate = self._dact("activation"), self._dact("gate_activation")
        H, W = self.hidden_size, params.W
        W_r, W_n = W[:, :H], W[:, 2 * H :]
        if self.layer_norm:
            # d out_col / d h_j = G_col (W[j, col] - w_j - hat_col s_j) for the layer norm of
            # each group of the h side times its gain (_ln_rows); `a` holds its diagonal, block by block
            hat, rstd, gain = res.hw_hat, res.hw_rstd, params.gain_h
            G, w, s = _ln_rows(W[:, : 2 * H], hat[..., : 2 * H], rstd[..., :1], gain[: 2 * H])
            a = [G[..., q * H : (q + 1) * H] * (self._diag_w(params, q, s) - w - hat[..., q * H : (q + 1) * H] * s)
                 for q in (0, 1)]
            if self.reset_after:
                G_n, w_n, s_n = _ln_rows(W_n, hat[..., 2 * H :], rstd[..., 1:], gain[2 * H :])
                a.append(G_n * (self._diag_w(params, 2, s_n) - w_n - hat[..., 2 * H :] * s_n))
        else:
            a = [self._diag_w(params, q, res.z) for q in range(3)]
        if self.reset_after:  # n = tanh(. + r * m), m = h W_n + b_hn (or LN(h W_n) * gain + b_hn)
            dn = dgate(res.r) * a[0] * res.m + res.r * a[2]
        else:  # n = tanh(. + q), q = (r * h) W_n: every r_k depends on h_j through W_r[j, k]
            u = res.h_prev * dgate(res.r)
            if not self.layer_norm:
                dn = res.r * a[2] + u @ (W_n * W_r.T)
            else:
                # d q_l / d h_j = r_j W_n[j, l] + sum_k u_k (d a_r,k / d h_j) W_n[k, l]; the layer
                # norm of q also needs its mean over l, and that of q_hat_l d q_l / d h_j
                Gr, hat_r = G[..., :H], hat[..., :H]
                dq = res.r * _last(jnp.diagonal(W_n), u) + (u * Gr) @ (W_n * W_r.T) - w * ((u * Gr) @ W_n) \
                    - s * ((u * Gr * hat_r) @ W_n)
                row, q_hat = W_n.sum(1), hat[..., 2 * H :]
                along = lambda v: res.r * v + _ln_through(u * v, W_r, Gr, w, s, hat_r)  # noqa: E731
                dn = _last(gain[2 * H :], u) * rstd[..., 1:] * (
                    dq - along(_last(row, u)) / H - q_hat * along(q_hat @ W_n.T) / H)
        return 1 - res.z + dgate(res.z) * a[1] * (res.n - res.h_prev) + res.z * dact(res.n) * dn


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
