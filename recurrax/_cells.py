"""The lecture's three cells, their parameters, and ``stack``.

Equations (DESIGN.md 1.1; ``sig`` is ``gate_activation``, ``tanh`` is ``activation``)::

    RNN   s_t = tanh(x_t U + s_{t-1} W + b)
    LSTM  [i f g o] = x_t U + h_{t-1} W + b        (pre-activations, blocks of H)
          i, f, o = sig(.), g = tanh(.)
          c_t = f * c_{t-1} + i * g,   h_t = o * tanh(c_t)
    GRU   [r z] = sig(x_t U_rz + h_{t-1} W_rz + b_rz)
          n_t = tanh(x_t U_n + (r_t * h_{t-1}) W_n + b_n)       reset before the matmul
          h_t = (1 - z_t) * h_{t-1} + z_t * n_t
    GRU, reset_after=True (cuDNN / PyTorch):
          n_t = tanh(x_t U_n + b_n + r_t * (h_{t-1} W_n + b_hn))

Weight layout (DESIGN.md 1.2): ``U`` is ``[input_size, k*H]``, ``W`` is ``[H, k*H]``, ``b`` is
``[k*H]``, applied as ``x @ U`` (no transposes), gate blocks in the order LSTM
``(i, f, g, o)``, GRU ``(r, z, n)``. Each block is initialised separately, so an
orthogonal ``recurrent_init`` makes every ``[H, H]`` block orthogonal.

Every built-in cell is a frozen dataclass (the *spec*) whose methods fill the
:class:`~recurrax.Cell` tuple. Specs compare by value, so two ``lstm(8)`` cells are equal
and share compiled code, and the hand-written backward pass (``_bptt.py``) can recognise
a built-in cell from ``cell.apply.spec``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar, NamedTuple, Optional

import jax
import jax.numpy as jnp

from recurrax._base import Array, Carry, Cell, Params, PRNGKey, add_bias

Initializer = Callable[[PRNGKey, tuple, Any], Array]


class CellParams(NamedTuple):
    """Parameters of the RNN, LSTM and (lecture) GRU cells.

    Attributes:
      U: ``[input_size, k*H]`` input weights.
      W: ``[H, k*H]`` recurrent weights.
      b: ``[k*H]`` bias, or ``None`` for a cell built with ``use_bias=False``.
    """

    U: Array
    W: Array
    b: Optional[Array]


class GRUResetAfterParams(NamedTuple):
    """Parameters of the reset-after GRU: :class:`CellParams` plus ``b_hn`` ``[H]``.

    ``b_hn`` is the bias inside the reset product, ``r * (h W_n + b_hn)`` (PyTorch's
    ``bias_hh`` for the n gate).
    """

    U: Array
    W: Array
    b: Optional[Array]
    b_hn: Optional[Array]


class LSTMCarry(NamedTuple):
    """The LSTM's carry: output ``h`` and cell state ``c`` (the lecture's ``s_t``), ``[H]`` each."""

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


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}.")
    return value


@dataclasses.dataclass(frozen=True)
class _Spec:
    """What the three built-in cells share: configuration, init, dtype handling, checks."""

    hidden_size: int
    activation: Callable[[Array], Array] = jnp.tanh
    gate_activation: Callable[[Array], Array] = jax.nn.sigmoid
    kernel_init: Optional[Initializer] = None
    recurrent_init: Optional[Initializer] = None
    bias_init: Optional[Initializer] = None
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32

    name: ClassVar[str]
    num_gates: ClassVar[int]

    def __post_init__(self):
        _check_positive_int("hidden_size", self.hidden_size)

    # -- the Cell protocol -------------------------------------------------------------

    def init(self, key: PRNGKey, input_size: int) -> Params:
        _check_positive_int("input_size", input_size)
        H, k, dtype = self.hidden_size, self.num_gates, self.param_dtype
        default = uniform_init(1.0 / math.sqrt(H))

        def blocks(init, key, rows):
            keys = jax.random.split(key, k)
            shape = (H,) if rows is None else (rows, H)
            return jnp.concatenate([(init or default)(kk, shape, dtype) for kk in keys], -1)

        ku, kw, kb, kx = jax.random.split(key, 4)
        U = blocks(self.kernel_init, ku, input_size)
        W = blocks(self.recurrent_init, kw, H)
        b = blocks(self.bias_init, kb, None) if self.use_bias else None
        return self._params(U, W, b, kx)

    def initial_carry(self, batch_shape: tuple = (), dtype: Any = jnp.float32) -> Carry:
        return jnp.zeros((*tuple(batch_shape), self.hidden_size), dtype)

    def apply(self, params: Params, carry: Carry, x: Array) -> tuple[Carry, Array]:
        new_carry, y, _ = self.forward(params, carry, x)
        return new_carry, y

    def forward(self, params, carry, x):
        """``apply`` plus the residuals the hand-written backward pass needs."""
        x = jnp.asarray(x)
        self._check(params, carry, x)
        params = self.prepare_params(params)
        return self.step(params, self.project(params, x), carry)

    # The parts of ``forward``. ``prepare_params`` and ``project`` do not depend on the
    # carry, so ``scan`` can run them outside the loop: the weights as the loop uses them
    # (the compute dtype) and the input projection ``x U``, which ``scan`` does for all
    # steps at once or per step (``_scan.project_in_loop``).

    def prepare_params(self, params):
        if self.dtype is not None:
            params = jax.tree.map(lambda a: a.astype(self.dtype), params)
        return params

    def project(self, params, xs):
        """``xs U`` with prepared params; ``xs`` is ``[..., input_size]``."""
        if self.dtype is not None:
            xs = xs.astype(self.dtype)
        return _project(xs, params.U)

    def step(self, params, xu, carry):
        carry_dtype = jax.tree.leaves(carry)[0].dtype
        if self.dtype is not None:
            carry = jax.tree.map(lambda a: a.astype(self.dtype), carry)
        # The bias is added here, per step, not in prepare: on XLA:CPU adding it to the
        # whole [T, k*H] projection made the LSTM loop about 45% slower (BENCHMARKS.md).
        new_carry, res = self._step(params, carry, add_bias(xu, params.b))
        # The carry keeps the dtype it came in with, so lax.scan's loop type is stable
        # when the computation runs in a different (e.g. lower) precision.
        new_carry = jax.tree.map(lambda a: a.astype(carry_dtype), new_carry)
        return new_carry, _output(new_carry), res

    # -- per-cell pieces -----------------------------------------------------------------

    def _params(self, U, W, b, key) -> Params:
        return CellParams(U, W, b)

    def _step(self, params, carry, xu):
        """One step from the projected input ``xu = x U + b``: ``(new_carry, residuals)``."""
        raise NotImplementedError

    def _check(self, params, carry, x):
        H, k = self.hidden_size, self.num_gates
        U, W = getattr(params, "U", None), getattr(params, "W", None)
        if U is None or W is None or U.ndim != 2 or U.shape[1] != k * H or W.shape != (H, k * H):
            got = jax.tree.map(jnp.shape, params)
            raise ValueError(
                f"params do not fit this {self.name} cell (hidden_size={H}): expected U "
                f"[input_size, {k * H}] and W [{H}, {k * H}]; got {got}. Create them with "
                f"this cell's init(key, input_size)."
            )
        if x.ndim == 0 or x.shape[-1] != U.shape[0]:
            raise ValueError(
                f"x must be [..., {U.shape[0]}] (input_size={U.shape[0]}, from params.U); "
                f"got shape {x.shape}."
            )
        for leaf in jax.tree.leaves(carry):
            if leaf.shape != (*x.shape[:-1], H):
                raise ValueError(
                    f"the carry must be [..., {H}] with the same leading (batch) dimensions "
                    f"as x {x.shape}; got a carry leaf of shape {leaf.shape}. Use "
                    f"cell.initial_carry(x.shape[:-1]) or jax.vmap over the batch."
                )


@jax.custom_batching.custom_vmap
def _project_time_major(xs, U):
    return xs @ U


@_project_time_major.def_vmap
def _project_vmap(axis_size, in_batched, xs, U):
    xs_batched, U_batched = in_batched
    if U_batched or not xs_batched:  # an ensemble of parameters: the plain batched product
        xs = xs if xs_batched else jnp.broadcast_to(xs, (axis_size, *xs.shape))
        U = U if U_batched else jnp.broadcast_to(U, (axis_size, *U.shape))
        return jax.vmap(lambda x, u: x @ u)(xs, U), True
    return jnp.swapaxes(jnp.swapaxes(xs, 0, -2) @ U, 0, -2), True


@jax.custom_jvp
def _project(xs, U):
    """``xs @ U`` for ``xs`` ``[T, I]`` (or one step, ``[I]``); under ``jax.vmap`` time-major.

    vmap puts the batch first, ``[B, T, I]``, and ``lax.scan``'s batching rule then moves
    it to ``[T, B, k*H]``: a transpose of the large projected array (on XLA:CPU about a
    third of the LSTM's forward time, BENCHMARKS.md). Transposing the small input instead, and
    handing back a transposed view that the scan's own transpose cancels, avoids it.
    (``custom_vmap`` alone cannot be linearised, hence the ``custom_jvp`` around it,
    whose tangent is the ordinary product rule.)
    """
    return _project_time_major(xs, U)


@_project.defjvp
def _project_jvp(primals, tangents):
    (xs, U), (dxs, dU) = primals, tangents
    return _project_time_major(xs, U), dxs @ U + xs @ dU


def _sigmoid(x):
    # The same function as jax.nn.sigmoid (exp + divide) and no slower in a loop body on
    # XLA:CPU; the LSTM goes further and does its four gates as one tanh (BENCHMARKS.md).
    return 0.5 * jnp.tanh(0.5 * x) + 0.5


def _gate_fn(fn):
    return _sigmoid if fn is jax.nn.sigmoid else fn


def _output(carry):
    return carry.h if isinstance(carry, LSTMCarry) else carry


class RNNResidual(NamedTuple):
    h_prev: Array
    s: Array


class LSTMResidual(NamedTuple):
    h_prev: Array
    c_prev: Array
    i: Array
    f: Array
    g: Array
    o: Array
    tanh_c: Array


class GRUResidual(NamedTuple):
    h_prev: Array
    r: Array
    z: Array
    n: Array
    m: Array  # lecture form: r * h_prev (the input of W_n); reset-after: h_prev W_n + b_hn


@dataclasses.dataclass(frozen=True)
class _RNNSpec(_Spec):
    name: ClassVar[str] = "rnn"
    num_gates: ClassVar[int] = 1

    def _step(self, params, h, xu):
        s = self.activation(xu + h @ params.W)
        return s, RNNResidual(h, s)


@dataclasses.dataclass(frozen=True)
class _LSTMSpec(_Spec):
    forget_bias: Optional[float] = None

    name: ClassVar[str] = "lstm"
    num_gates: ClassVar[int] = 4

    def _params(self, U, W, b, key):
        if self.forget_bias is not None and b is not None:
            H = self.hidden_size
            b = b.at[H : 2 * H].set(self.forget_bias)
        return CellParams(U, W, b)

    def initial_carry(self, batch_shape: tuple = (), dtype: Any = jnp.float32) -> Carry:
        zeros = jnp.zeros((*tuple(batch_shape), self.hidden_size), dtype)
        return LSTMCarry(zeros, zeros)

    def _one_tanh(self):
        return self.gate_activation is jax.nn.sigmoid and self.activation is jnp.tanh

    def prepare_params(self, params):
        if not self._one_tanh():
            return super().prepare_params(params)
        # sigmoid(a) = (tanh(a / 2) + 1) / 2: with the i, f, o columns of U, W, b halved
        # (exactly: a power of two) ONE tanh over all 4H gates does the four activations.
        # XLA:CPU runs that far faster inside the loop than four sliced ones.
        H = self.hidden_size
        half = jnp.concatenate([jnp.full(2 * H, 0.5), jnp.ones(H), jnp.full(H, 0.5)]).astype(params.U.dtype)
        scaled = params._replace(U=params.U * half[None], W=params.W * half[None],
                                 b=None if params.b is None else params.b * half)
        return super().prepare_params(scaled)

    def _step(self, params, carry, xu):
        h, c = carry
        a = xu + h @ params.W
        if self._one_tanh():  # params from prepare: i, f, o pre-activations are halved
            i, f, g, o = jnp.split(jnp.tanh(a), 4, axis=-1)
            i, f, o = 0.5 * i + 0.5, 0.5 * f + 0.5, 0.5 * o + 0.5
        else:
            i, f, g, o = jnp.split(a, 4, axis=-1)
            sig = _gate_fn(self.gate_activation)
            i, f, g, o = sig(i), sig(f), self.activation(g), sig(o)
        c_new = f * c + i * g
        tanh_c = self.activation(c_new)
        return LSTMCarry(o * tanh_c, c_new), LSTMResidual(h, c, i, f, g, o, tanh_c)


@dataclasses.dataclass(frozen=True)
class _GRUSpec(_Spec):
    reset_after: bool = False

    name: ClassVar[str] = "gru"
    num_gates: ClassVar[int] = 3

    def _params(self, U, W, b, key):
        if not self.reset_after:
            return CellParams(U, W, b)
        H = self.hidden_size
        init = self.bias_init or uniform_init(1.0 / math.sqrt(H))
        b_hn = init(key, (H,), self.param_dtype) if self.use_bias else None
        return GRUResetAfterParams(U, W, b, b_hn)

    def _check(self, params, carry, x):
        expected = GRUResetAfterParams if self.reset_after else CellParams
        if not isinstance(params, expected):
            raise ValueError(
                f"a gru cell with reset_after={self.reset_after} takes {expected.__name__}; "
                f"got {type(params).__name__}. Create them with this cell's init."
            )
        super()._check(params, carry, x)

    def _step(self, params, h, xu):
        H, sig = self.hidden_size, _gate_fn(self.gate_activation)
        if self.reset_after:
            hw = h @ params.W
            r, z = jnp.split(sig(xu[..., : 2 * H] + hw[..., : 2 * H]), 2, axis=-1)
            m = add_bias(hw[..., 2 * H :], params.b_hn)
            n = self.activation(xu[..., 2 * H :] + r * m)
        else:
            r, z = jnp.split(sig(xu[..., : 2 * H] + h @ params.W[:, : 2 * H]), 2, axis=-1)
            m = r * h
            n = self.activation(xu[..., 2 * H :] + m @ params.W[:, 2 * H :])
        return h + z * (n - h), GRUResidual(h, r, z, n, m)


@dataclasses.dataclass(frozen=True)
class _Method:
    """``spec.<name>`` as a callable that compares by value.

    Python's bound methods compare their ``self`` by identity, so ``lstm(8) == lstm(8)``
    would be False and a cell passed to ``jax.jit`` as a static argument would recompile.
    """

    spec: Any
    name: str

    def __call__(self, *args, **kwargs):
        return getattr(self.spec, self.name)(*args, **kwargs)

    def __repr__(self):
        return f"{self.spec}.{self.name}"


def _cell(spec) -> Cell:
    return Cell(_Method(spec, "init"), _Method(spec, "initial_carry"), _Method(spec, "apply"))


def rnn(
    hidden_size: int,
    *,
    activation: Callable[[Array], Array] = jnp.tanh,
    kernel_init: Optional[Initializer] = None,
    recurrent_init: Optional[Initializer] = None,
    bias_init: Optional[Initializer] = None,
    use_bias: bool = True,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
) -> Cell:
    """The vanilla (Elman) RNN cell: ``s_t = activation(x_t U + s_{t-1} W + b)``.

    Args:
      hidden_size: ``H``, the size of the state ``s_t``.
      activation: the lecture's sigma; ``jnp.tanh`` by default (``jax.nn.relu`` is the
        other one PyTorch offers).
      kernel_init, recurrent_init, bias_init: initializers ``(key, shape, dtype)`` for
        ``U``, ``W`` and ``b``; ``None`` means ``U(-1/sqrt(H), 1/sqrt(H))`` as in PyTorch.
      use_bias: ``False`` gives ``params.b = None``.
      dtype: the dtype to compute in (params, input and carry are cast to it); ``None``
        computes in the inputs' own dtype. The new carry keeps the incoming carry's dtype.
      param_dtype: the dtype ``init`` creates parameters in.

    Returns:
      A :class:`Cell` with params :class:`CellParams` (``U`` ``[I, H]``, ``W`` ``[H, H]``,
      ``b`` ``[H]``) and carry ``s`` ``[H]``; the output is ``s_t``.

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> cell = recurrax.rnn(4)
      >>> params = cell.init(jax.random.key(0), 2)
      >>> s, y = cell.apply(params, cell.initial_carry(), jnp.ones(2))
      >>> bool(jnp.allclose(y, jnp.tanh(jnp.ones(2) @ params.U + params.b)))
      True
    """
    return _cell(
        _RNNSpec(hidden_size, activation, jax.nn.sigmoid, kernel_init, recurrent_init,
                 bias_init, use_bias, dtype, param_dtype)
    )


def lstm(
    hidden_size: int,
    *,
    activation: Callable[[Array], Array] = jnp.tanh,
    gate_activation: Callable[[Array], Array] = jax.nn.sigmoid,
    kernel_init: Optional[Initializer] = None,
    recurrent_init: Optional[Initializer] = None,
    bias_init: Optional[Initializer] = None,
    forget_bias: Optional[float] = None,
    use_bias: bool = True,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
) -> Cell:
    """The LSTM cell of the lecture (selective write, read and forget).

    ``[i f g o] = x_t U + h_{t-1} W + b``; ``i, f, o = gate_activation(.)``,
    ``g = activation(.)``; ``c_t = f * c_{t-1} + i * g``; ``h_t = o * activation(c_t)``.

    Args:
      hidden_size: ``H``.
      activation: for the candidate ``g`` and for ``c_t`` in the output; ``jnp.tanh``.
      gate_activation: for the gates ``i``, ``f``, ``o``; ``jax.nn.sigmoid``.
      kernel_init, recurrent_init, bias_init: as in :func:`rnn`, applied per gate block.
      forget_bias: if given, ``init`` sets the forget-gate bias ``b_f`` to this constant
        (1.0 is the usual choice for long lags, Jozefowicz et al. 2015).
      use_bias, dtype, param_dtype: as in :func:`rnn`.

    Returns:
      A :class:`Cell` with params :class:`CellParams` (``U`` ``[I, 4H]``, ``W``
      ``[H, 4H]``, ``b`` ``[4H]``, blocks ``(i, f, g, o)``) and carry
      :class:`LSTMCarry` ``(h, c)``; the output is ``h_t``.

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> cell = recurrax.lstm(4, forget_bias=1.0)
      >>> params = cell.init(jax.random.key(0), 2)
      >>> params.b[4:8].tolist()
      [1.0, 1.0, 1.0, 1.0]
    """
    return _cell(
        _LSTMSpec(hidden_size, activation, gate_activation, kernel_init, recurrent_init,
                  bias_init, use_bias, dtype, param_dtype, forget_bias)
    )


def gru(
    hidden_size: int,
    *,
    reset_after: bool = False,
    activation: Callable[[Array], Array] = jnp.tanh,
    gate_activation: Callable[[Array], Array] = jax.nn.sigmoid,
    kernel_init: Optional[Initializer] = None,
    recurrent_init: Optional[Initializer] = None,
    bias_init: Optional[Initializer] = None,
    use_bias: bool = True,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
) -> Cell:
    """The GRU cell: the lecture's form by default, the cuDNN/PyTorch form on request.

    ``r = sig(x U_r + h W_r + b_r)`` (the lecture's ``o_t``), ``z = sig(x U_z + h W_z + b_z)``
    (the lecture's ``i_t``), ``h_t = (1 - z) * h_{t-1} + z * n_t`` with
    ``n_t = tanh(x U_n + (r * h_{t-1}) W_n + b_n)``, or with ``reset_after=True``
    ``n_t = tanh(x U_n + b_n + r * (h_{t-1} W_n + b_hn))``.

    Args:
      hidden_size: ``H``.
      reset_after: ``False`` (the lecture, reset before the matmul) or ``True`` (reset
        after it, as cuDNN, PyTorch and Keras do; adds ``b_hn``). PyTorch's update gate is
        ``1 - z``: the converters negate that block.
      activation, gate_activation, kernel_init, recurrent_init, bias_init, use_bias, dtype,
        param_dtype: as in :func:`lstm`.

    Returns:
      A :class:`Cell` with params :class:`CellParams` (or :class:`GRUResetAfterParams`),
      blocks ``(r, z, n)``, and carry ``h`` ``[H]``; the output is ``h_t``.

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> cell = recurrax.gru(4, reset_after=True)
      >>> params = cell.init(jax.random.key(0), 2)
      >>> type(params).__name__, params.W.shape, params.b_hn.shape
      ('GRUResetAfterParams', (4, 12), (4,))
    """
    return _cell(
        _GRUSpec(hidden_size, activation, gate_activation, kernel_init, recurrent_init,
                 bias_init, use_bias, dtype, param_dtype, reset_after)
    )


def output_size(cell: Cell, params: Params, input_size: int) -> int:
    """The size of ``y`` that ``cell`` produces from inputs of ``input_size`` features."""
    spec = spec_of(cell)
    if isinstance(spec, _Spec):
        return spec.hidden_size
    dtype = jax.tree.leaves(params)[0].dtype if jax.tree.leaves(params) else jnp.float32
    x = jax.ShapeDtypeStruct((input_size,), dtype)
    _, y = jax.eval_shape(lambda p, x: cell.apply(p, cell.initial_carry((), dtype), x), params, x)
    return y.shape[-1]


@dataclasses.dataclass(frozen=True)
class _StackSpec:
    cells: tuple

    def init(self, key: PRNGKey, input_size: int) -> tuple:
        params = []
        for cell, k in zip(self.cells, jax.random.split(key, len(self.cells))):
            params.append(cell.init(k, input_size))
            input_size = output_size(cell, params[-1], input_size)
        return tuple(params)

    def initial_carry(self, batch_shape: tuple = (), dtype: Any = jnp.float32) -> tuple:
        return tuple(cell.initial_carry(batch_shape, dtype) for cell in self.cells)

    def apply(self, params: tuple, carry: tuple, x: Array):
        self._check(params, carry)
        new_carry = []
        for cell, p, c in zip(self.cells, params, carry):
            c, x = cell.apply(p, c, x)
            new_carry.append(c)
        return tuple(new_carry), x

    def _check(self, params, carry):
        n = len(self.cells)
        for name, value in (("params", params), ("carry", carry)):
            if not isinstance(value, (tuple, list)) or len(value) != n:
                raise ValueError(f"a stack of {n} cells takes a tuple of {n} {name}; got {type(value).__name__}.")


def stack(*cells: Cell) -> Cell:
    """A multi-layer cell: layer ``k``'s output is layer ``k+1``'s input within each step.

    Args:
      *cells: one or more cells, bottom first.

    Returns:
      A :class:`Cell` whose params and carry are tuples with one entry per layer and
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
        if not isinstance(cell, Cell):
            raise TypeError(f"stack takes Cells; argument {i} is a {type(cell).__name__}.")
    return _cell(_StackSpec(tuple(cells)))


def prepare_params(spec, params):
    """The weights as ``step`` uses them (a built-in cell, or a stack's layer 0)."""
    if isinstance(spec, _StackSpec):
        return (prepare_params(spec_of(spec.cells[0]), params[0]), *params[1:])
    return spec.prepare_params(params)


def project(spec, prepared, xs):
    """The input projection ``xs U`` (``[..., k*H]``) from ``prepare_params``' output."""
    if isinstance(spec, _StackSpec):
        return project(spec_of(spec.cells[0]), prepared[0], xs)
    return spec.project(prepared, xs)


def prepare(spec, params, xs):
    """The carry-independent work of a whole sequence: ``(prepared params, xs U)``."""
    prepared = prepare_params(spec, params)
    return prepared, project(spec, prepared, xs)


def step(spec, params, xu, carry):
    """One step from prepared params and projected input: ``(carry, y, residuals)``.

    In a stack only layer 0 reads ``xu``; the layers above run their full ``forward``
    (their inputs only exist within the step; a user-defined layer runs its ``apply``).
    """
    if not isinstance(spec, _StackSpec):
        return spec.step(params, xu, carry)
    new_carry, layer_res, inputs = [], [], []
    for k, (cell, pk, ck) in enumerate(zip(spec.cells, params, carry)):
        sub = spec_of(cell)
        if k == 0:
            ck, x, rk = step(sub, pk, xu, ck)
        elif sub is None:
            inputs.append(x)
            (ck, x), rk = cell.apply(pk, ck, x), None
        else:
            inputs.append(x)
            ck, x, rk = sub.forward(pk, ck, x)
        new_carry.append(ck)
        layer_res.append(rk)
    return tuple(new_carry), x, (tuple(layer_res), tuple(inputs))


def fast_spec(cell: Cell):
    """The spec when ``prepare``/``step`` apply: a built-in cell, or a stack whose layer 0 is one."""
    spec = spec_of(cell)
    if isinstance(spec, _StackSpec) and not isinstance(spec_of(spec.cells[0]), _Spec):
        return None
    return spec


def spec_of(cell: Cell):
    """The spec behind a built-in cell or a stack, else ``None``."""
    spec = getattr(cell.apply, "spec", None)
    return spec if isinstance(spec, (_Spec, _StackSpec)) else None
