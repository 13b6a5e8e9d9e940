"""Parallel-in-time evaluation of a recurrence (DESIGN.md 1.6), and minGRU / minLSTM.

A recurrence ``s_t = f(s_{t-1}, x_t)`` looks inherently sequential, but its whole
trajectory ``S = (s_1, ..., s_T)`` is the root of ``R(S)_t = s_t - f(s_{t-1}, x_t)``, and
Newton's method for that root only needs *linear* recurrences:

    s_t^{new} = J_t s_{t-1}^{new} + (f(s_{t-1}, x_t) - J_t s_{t-1}),   J_t = df/ds at s_{t-1},

which compose as affine maps ``s -> J s + b`` and are therefore solved for all ``t`` at once
by ``jax.lax.associative_scan`` in ``O(log T)`` depth. That is DEER (Lim et al., ICLR 2024).
Quasi-DEER (Gonzalez et al., NeurIPS 2024) keeps only the diagonal of ``J_t``: each
iteration is then ``O(T D)`` work instead of ``O(T D^3)``, at the price of more (linearly
rather than quadratically converging) iterations. Either way the first ``k`` states are
exact after ``k`` iterations, so at most ``T`` iterations are ever needed.

The gradient needs no backpropagation through the iterations: at the solution the
implicit function theorem gives the adjoint recurrence
``lambda_t = dL/ds_t + J_{t+1}^T lambda_{t+1}``, one more (reverse) associative scan, after
which one vector-Jacobian product of the batched step gives every gradient.

minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?") drop the state from
their gates, so their recurrence ``h_t = a_t * h_{t-1} + b_t`` is already linear and one
associative scan evaluates it exactly.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from recurrax._base import Array, Carry, Cell, Params, PRNGKey, add_bias
from recurrax._bptt import _dact
from recurrax._cells import (
    Initializer,
    LSTMCarry,
    _GRUSpec,
    _LSTMSpec,
    _RNNSpec,
    _Spec,
    _cell,
    _check_positive_int,
    _sigmoid,
    spec_of,
    uniform_init,
)
from recurrax._scan import check_carry, check_length, check_xs

METHODS = ("deer", "quasi-deer")


class ParallelInfo(NamedTuple):
    """What :func:`parallel_scan` did; every field is a JAX scalar, so it works under jit.

    Attributes:
      iterations: ``int32``, Newton iterations (linear solves) used; 1 for the exact
        single pass of ``min_gru`` / ``min_lstm``.
      converged: ``bool``, whether the iterations reached ``tol`` (a NaN or inf iterate
        counts as not converged).
      residual: the returned trajectory's ``max_t ||s_t - f(s_{t-1}, x_t)||_inf`` over the
        valid steps (flattened carry), whichever way it was computed.
      fell_back: ``bool``, whether the result came from the sequential ``recurrax.scan``
        because the iterations did not converge.
    """

    iterations: Array
    converged: Array
    residual: Array
    fell_back: Array


# -- minGRU and minLSTM ------------------------------------------------------------------


class MinCellParams(NamedTuple):
    """Parameters of :func:`min_gru` and :func:`min_lstm`.

    Attributes:
      U: ``[input_size, k*H]``, gate blocks ``(z, h~)`` (minGRU, k=2) or
        ``(f, i, h~)`` (minLSTM, k=3), applied as ``x @ U``.
      b: ``[k*H]`` bias, or ``None`` for a cell built with ``use_bias=False``.
    """

    U: Array
    b: Optional[Array]


@dataclasses.dataclass(frozen=True)
class _MinSpec:
    """The two min cells: ``h_t = a(x_t) * h_{t-1} + b(x_t)``, no state in the gates."""

    hidden_size: int
    kernel_init: Optional[Initializer] = None
    bias_init: Optional[Initializer] = None
    use_bias: bool = True
    param_dtype: Any = jnp.float32

    name: ClassVar[str]
    num_blocks: ClassVar[int]

    def __post_init__(self):
        _check_positive_int("hidden_size", self.hidden_size)

    def init(self, key: PRNGKey, input_size: int) -> MinCellParams:
        _check_positive_int("input_size", input_size)
        H, k, dtype = self.hidden_size, self.num_blocks, self.param_dtype
        default = uniform_init(1.0 / math.sqrt(H))
        ku, kb = jax.random.split(key)

        def blocks(init, key, shape):
            return jnp.concatenate([(init or default)(kk, shape, dtype) for kk in jax.random.split(key, k)], -1)

        b = blocks(self.bias_init, kb, (H,)) if self.use_bias else None
        return MinCellParams(blocks(self.kernel_init, ku, (input_size, H)), b)

    def initial_carry(self, batch_shape: tuple = (), dtype: Any = jnp.float32) -> Array:
        return jnp.zeros((*tuple(batch_shape), self.hidden_size), dtype)

    def apply(self, params: MinCellParams, h: Array, x: Array) -> tuple[Array, Array]:
        x = jnp.asarray(x)
        self._check(params, h, x)
        a, b = self.coefficients(params, x)
        h = a * h + b
        return h, h

    def coefficients(self, params: MinCellParams, x: Array) -> tuple[Array, Array]:
        """``(a, b)`` ``[..., H]`` each, with ``h_t = a * h_{t-1} + b``."""
        raise NotImplementedError

    def _check(self, params, h, x):
        H, k = self.hidden_size, self.num_blocks
        U = getattr(params, "U", None)
        if not isinstance(params, MinCellParams) or U is None or U.ndim != 2 or U.shape[1] != k * H:
            raise ValueError(
                f"params do not fit this {self.name} cell (hidden_size={H}): expected "
                f"MinCellParams with U [input_size, {k * H}]; got {jax.tree.map(jnp.shape, params)}. "
                f"Create them with this cell's init(key, input_size)."
            )
        if x.ndim == 0 or x.shape[-1] != U.shape[0]:
            raise ValueError(f"x must be [..., {U.shape[0]}] (input_size, from params.U); got shape {x.shape}.")
        if jnp.shape(h) != (*x.shape[:-1], H):
            raise ValueError(
                f"the carry must be [..., {H}] with the same leading (batch) dimensions as x "
                f"{x.shape}; got {jnp.shape(h)}. Use cell.initial_carry(x.shape[:-1])."
            )


@dataclasses.dataclass(frozen=True)
class _MinGRUSpec(_MinSpec):
    name: ClassVar[str] = "min_gru"
    num_blocks: ClassVar[int] = 2

    def coefficients(self, params, x):
        z, h_tilde = jnp.split(add_bias(x @ params.U, params.b), 2, axis=-1)
        z = _sigmoid(z)
        return 1 - z, z * h_tilde


@dataclasses.dataclass(frozen=True)
class _MinLSTMSpec(_MinSpec):
    name: ClassVar[str] = "min_lstm"
    num_blocks: ClassVar[int] = 3

    def coefficients(self, params, x):
        f, i, h_tilde = jnp.split(add_bias(x @ params.U, params.b), 3, axis=-1)
        f, i = _sigmoid(f), _sigmoid(i)
        return f / (f + i), i / (f + i) * h_tilde


def min_gru(
    hidden_size: int,
    *,
    kernel_init: Optional[Initializer] = None,
    bias_init: Optional[Initializer] = None,
    use_bias: bool = True,
    param_dtype: Any = jnp.float32,
) -> Cell:
    """minGRU (Feng et al. 2024): a GRU whose gates see only the input.

    ``z_t = sigmoid(x_t U_z + b_z)``, ``h~_t = x_t U_h + b_h``,
    ``h_t = (1 - z_t) * h_{t-1} + z_t * h~_t``.

    This is the paper's plain ("vanilla") version: no ``g(.)`` activation on ``h~`` and no
    log-space scan. Because ``0 < 1 - z_t < 1`` the associative scan over the pairs
    ``(1 - z_t, z_t h~_t)`` only ever multiplies numbers below one, so it needs no log
    space to stay finite. :func:`parallel_scan` evaluates this cell exactly in one pass;
    it is also an ordinary :class:`~recurrax.Cell` for :func:`recurrax.scan`.

    Args:
      hidden_size: ``H``.
      kernel_init, bias_init: initializers ``(key, shape, dtype)`` applied per block;
        ``None`` means ``U(-1/sqrt(H), 1/sqrt(H))`` as for the other cells.
      use_bias: ``False`` gives ``params.b = None``.
      param_dtype: the dtype ``init`` creates parameters in.

    Returns:
      A :class:`Cell` with params :class:`MinCellParams` (``U`` ``[I, 2H]``, ``b``
      ``[2H]``, blocks ``(z, h~)``) and carry ``h`` ``[H]``; the output is ``h_t``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from recurrax._parallel import min_gru
      >>> cell = min_gru(4)
      >>> params = cell.init(jax.random.key(0), 3)
      >>> h, y = cell.apply(params, cell.initial_carry((2,)), jnp.ones((2, 3)))
      >>> params.U.shape, y.shape
      ((3, 8), (2, 4))
    """
    return _cell(_MinGRUSpec(hidden_size, kernel_init, bias_init, use_bias, param_dtype))


def min_lstm(
    hidden_size: int,
    *,
    kernel_init: Optional[Initializer] = None,
    bias_init: Optional[Initializer] = None,
    use_bias: bool = True,
    param_dtype: Any = jnp.float32,
) -> Cell:
    """minLSTM (Feng et al. 2024): an LSTM whose gates see only the input, normalised.

    ``f_t = sigmoid(x_t U_f + b_f)``, ``i_t = sigmoid(x_t U_i + b_i)``,
    ``h~_t = x_t U_h + b_h``, ``f'_t = f_t / (f_t + i_t)``, ``i'_t = i_t / (f_t + i_t)``,
    ``h_t = f'_t * h_{t-1} + i'_t * h~_t``.

    The paper's plain version with the time-independent normalisation of the gates
    (no ``g(.)``, no log space; see :func:`min_gru` for why none is needed).

    Args:
      hidden_size, kernel_init, bias_init, use_bias, param_dtype: as in :func:`min_gru`.

    Returns:
      A :class:`Cell` with params :class:`MinCellParams` (``U`` ``[I, 3H]``, ``b``
      ``[3H]``, blocks ``(f, i, h~)``) and carry ``h`` ``[H]``; the output is ``h_t``.

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> from recurrax._parallel import min_lstm, parallel_scan
      >>> cell = min_lstm(4)
      >>> params = cell.init(jax.random.key(0), 3)
      >>> xs = jnp.ones((10, 3))
      >>> h, ys, info = parallel_scan(cell, params, xs)
      >>> bool(jnp.allclose(ys, recurrax.scan(cell, params, xs)[1], atol=1e-6)), int(info.iterations)
      (True, 1)
    """
    return _cell(_MinLSTMSpec(hidden_size, kernel_init, bias_init, use_bias, param_dtype))


# -- linear recurrences by associative scan ------------------------------------------------


def _linear_recurrence(A: Array, b: Array, reverse: bool = False) -> Array:
    """All ``x_t = A_t x_{t-1} + b_t`` from ``x_0 = 0`` (reverse: ``x_t = A_t x_{t+1} + b_t``).

    ``A`` is ``[T, D, D]``, or ``[T, D]`` for diagonal matrices; ``b`` is ``[T, D]``.
    Step ``t`` is the affine map ``x -> A_t x + b_t``; composing maps is associative, so
    ``associative_scan`` forms every prefix composition, whose offset is ``x_t``.
    """
    if A.ndim == b.ndim:

        def compose(first, then):
            return then[0] * first[0], then[0] * first[1] + then[1]

    else:

        def compose(first, then):
            return then[0] @ first[0], (then[0] @ first[1][..., None])[..., 0] + then[1]

    return lax.associative_scan(compose, (A, b), reverse=reverse)[1]


# -- the step, its Jacobian, and its diagonal ----------------------------------------------


def _hand_diagonal(spec: _Spec) -> Optional[Callable]:
    """``(params, carry, x) -> (new_carry, diag)`` for a built-in cell, or ``None``.

    ``diag`` (a pytree like the carry) is the exact diagonal of ``d new_carry / d carry``
    at about the cost of one step, where the generic route needs ``D`` Jacobian-vector
    products. Derivatives are those of docs/bptt.md, written with the step's residuals.
    """
    if not isinstance(spec, (_RNNSpec, _LSTMSpec, _GRUSpec)) or spec.dtype is not None:
        return None
    try:
        dact, dgate = _dact(spec, "activation"), _dact(spec, "gate_activation")
    except NotImplementedError:
        return None
    H = spec.hidden_size

    def diagonal(params, carry, x):
        new, _, res = spec.forward(params, carry, x)
        w = lambda k: jnp.diagonal(params.W[:, k * H : (k + 1) * H])  # noqa: E731
        if isinstance(spec, _RNNSpec):
            return new, dact(res.s) * w(0)
        if isinstance(spec, _LSTMSpec):
            dc = dgate(res.i) * w(0) * res.g + dgate(res.f) * w(1) * res.c_prev + res.i * dact(res.g) * w(2)
            dh = dgate(res.o) * w(3) * res.tanh_c + res.o * dact(res.tanh_c) * dc
            return new, LSTMCarry(dh, res.f)
        if spec.reset_after:  # n = tanh(. + r * m), m = h W_n + b_hn
            dn = dgate(res.r) * w(0) * res.m + res.r * w(2)
        else:  # n = tanh(. + (r * h) W_n): every r_j depends on h_i through W_r[i, j]
            W_r, W_n = params.W[:, :H], params.W[:, 2 * H :]
            dn = res.r * w(2) + (res.h_prev * dgate(res.r)) @ (W_n * W_r.T)
        return new, 1 - res.z + dgate(res.z) * w(1) * (res.n - res.h_prev) + res.z * dact(res.n) * dn

    return diagonal


def _make_step(cell: Cell, unravel: Callable):
    """The step on flattened states, an identity map at padding steps (``valid`` False)."""

    def step(params, s, x, valid):
        new, _ = cell.apply(params, unravel(s), x)
        return jnp.where(valid, ravel_pytree(new)[0], s)

    return step


def _make_linearise(cell: Cell, unravel: Callable, step: Callable, diagonal: bool):
    """``(params, s, x, valid) -> (f(s, x), J)``: ``J`` ``[D, D]``, or its diagonal ``[D]``."""
    hand = _hand_diagonal(spec_of(cell)) if diagonal else None

    def full(params, s, x, valid):
        J, F = jax.jacfwd(lambda s: (step(params, s, x, valid),) * 2, has_aux=True)(s)
        return F, J

    def by_hand(params, s, x, valid):
        new, d = hand(params, unravel(s), x)
        F, d = ravel_pytree(new)[0], ravel_pytree(d)[0]
        return jnp.where(valid, F, s), jnp.where(valid, d, jnp.ones_like(d))

    def diagonal_of_full(params, s, x, valid):
        F, J = full(params, s, x, valid)
        return F, jnp.diagonal(J)

    if hand is not None:
        return by_hand
    return diagonal_of_full if diagonal else full


def _max_abs(x: Array) -> Array:
    """``max |x|``, and ``inf`` if any entry is NaN.

    Not ``jnp.max``: XLA:CPU's vectorised max reduction can drop NaNs (it returned ``-inf``
    for arrays holding NaN), which would make a diverged iterate look converged.
    """
    return jnp.max(jnp.where(jnp.isnan(x), jnp.inf, jnp.abs(x)))


def _shift_in(s0: Array, S: Array) -> Array:
    """``(s_0, ..., s_{T-1})``: the state entering each step."""
    return jnp.concatenate([s0[None], S[:-1]], axis=0)


def _newton_solver(cell, unravel, method, max_iters, fallback):
    """The trajectory ``S`` ``[T, D]`` as a function of ``(params, xs, s0, valid, tol)``.

    A ``custom_vjp``: the forward pass iterates (and may fall back to a sequential scan),
    the backward pass is the implicit-function-theorem adjoint at the solution.
    """
    step = _make_step(cell, unravel)
    batched = jax.vmap(step, in_axes=(None, 0, 0, 0))
    linearise = jax.vmap(_make_linearise(cell, unravel, step, method != "deer"), in_axes=(None, 0, 0, 0))
    jacobian = jax.vmap(_make_linearise(cell, unravel, step, False), in_axes=(None, 0, 0, 0))

    def iterate(params, xs, s0, valid, tol):
        def lin(S):
            F, J = linearise(params, _shift_in(s0, S), xs, valid)
            return F, J, _max_abs(S - F)

        def newton(S, F, J):
            # Step 1 starts from the exact s_0, so s_1 = f(s_0, x_1): J_1 drops out.
            J = J.at[0].set(0)
            prev = _shift_in(s0, S)
            b = F - (J * prev if J.ndim == 2 else (J @ prev[..., None])[..., 0])
            return _linear_recurrence(J, b)

        def body(state):
            # Linearise around S; take the Newton step only if S is not good enough yet
            # (lax.cond, so the last, checking linearisation costs no linear solve).
            k, S, _, _ = state
            F, J, r = lin(S)
            go = (k < max_iters) & jnp.isfinite(r) & (r > tol)
            S = lax.cond(go, lambda: newton(S, F, J), lambda: S)
            return k + go.astype(k.dtype), S, r, go

        S = jnp.broadcast_to(s0, (xs.shape[0], s0.shape[0]))  # initial guess: s_0 throughout
        inf = jnp.array(jnp.inf, s0.dtype)
        k, S, r, _ = lax.while_loop(lambda state: state[3], body, (jnp.int32(0), S, inf, jnp.bool_(True)))
        converged = r <= tol
        if fallback:

            def sequential():
                def body(s, inputs):
                    s = step(params, s, *inputs)
                    return s, s

                return lax.scan(body, s0, (xs, valid))[1]

            S = lax.cond(converged, lambda: S, sequential)
        return S, (k, converged)

    def fwd(params, xs, s0, valid, tol):
        S, stats = iterate(params, xs, s0, valid, tol)
        return (S, stats), (params, xs, s0, valid, tol, S)

    def bwd(res, cotangents):
        params, xs, s0, valid, tol, S = res
        S_bar = cotangents[0]
        prev = _shift_in(s0, S)
        _, J = jacobian(params, prev, xs, valid)
        # lambda_t = dL/ds_t + J_{t+1}^T lambda_{t+1}, with lambda_{T+1} = 0
        K = jnp.concatenate([jnp.swapaxes(J[1:], -1, -2), jnp.zeros_like(J[:1])], axis=0)
        lam = _linear_recurrence(K, S_bar, reverse=True)
        _, vjp = jax.vjp(lambda p, prev, xs: batched(p, prev, xs, valid), params, prev, xs)
        params_bar, prev_bar, xs_bar = vjp(lam)
        # tol is passed as an argument (not closed over) so that it may be traced
        return params_bar, xs_bar, prev_bar[0], None, jnp.zeros_like(tol)

    solve = jax.custom_vjp(iterate)
    solve.defvjp(fwd, bwd)
    return solve


def _check_options(method, max_iters, tol):
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}; got {method!r}.")
    if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1:
        raise ValueError(f"max_iters must be a positive int; got {max_iters!r}.")
    if tol is not None and not isinstance(tol, jax.core.Tracer) and not float(tol) > 0:
        raise ValueError(f"tol must be a positive number (or None for the dtype's default); got {tol!r}.")


def _default_tol(dtype: Any) -> float:
    # A few times the rounding noise of one step (the batched evaluation of f differs from
    # the sequential one in the last bits): 9.5e-7 in float32, 1e-11 in float64.
    return max(8 * float(jnp.finfo(dtype).eps), 1e-11)


def parallel_scan(
    cell: Cell,
    params: Params,
    xs: Array,
    carry: Optional[Carry] = None,
    *,
    method: str = "deer",
    length: Any = None,
    max_iters: int = 100,
    tol: Any = None,
    fallback: bool = True,
) -> tuple[Carry, Array, ParallelInfo]:
    """:func:`recurrax.scan`, computed in parallel over time by Newton's method (DEER).

    Returns what ``recurrax.scan(cell, params, xs, carry, length=length)`` returns, plus an
    ``info``. The whole trajectory is found at once: starting from the guess
    ``s_t = s_0`` (the initial carry) for every ``t``, each iteration linearises every step
    around the current guess and solves the linear recurrence with one
    ``jax.lax.associative_scan`` (module docstring). Iterations stop when

        residual = max_t ||s_t - f(s_{t-1}, x_t)||_inf <= tol

    over the flattened carry (``jax.flatten_util.ravel_pytree``), or after ``max_iters``
    (at most ``T`` are ever needed), or at a NaN/inf iterate. If they did not converge and
    ``fallback`` is on, the result is computed by the sequential scan instead (a
    ``lax.cond``, so it works under jit) and ``info.fell_back`` says so.

    Padding steps (``t >= length``) are identity maps, so the carry freezes there exactly
    as in :func:`recurrax.scan`, and their outputs are zero.

    ``min_gru`` and ``min_lstm`` cells are recognised and evaluated exactly by a single
    associative scan (``info.iterations == 1``), whatever ``method``.

    Gradients (``jax.grad``/``jax.vjp``, with respect to ``params``, ``xs`` and ``carry``)
    do not differentiate the iterations: at the solution, the adjoint recurrence
    ``lambda_t = dL/ds_t + J_{t+1}^T lambda_{t+1}`` is solved by one reverse associative
    scan with the full transposed Jacobians (for ``"quasi-deer"`` too, so the gradient is
    exact), followed by one vector-Jacobian product of the batched step. They equal the
    sequential scan's gradients when the forward pass converged or fell back. Forward-mode
    differentiation (``jax.jvp``) is not supported (a ``jax.custom_vjp``).

    Cost: ``"deer"`` forms ``[T, D, D]`` Jacobians by ``jax.jacfwd`` (``D`` Jacobian-vector
    products per step) and composes ``D x D`` matrices in the scan, ``O(T D^3)`` work and
    ``O(T D^2)`` memory per iteration; ``"quasi-deer"`` keeps only the diagonal, ``O(T D)``
    in the scan; for the built-in ``rnn``, ``lstm`` and ``gru`` cells (tanh / sigmoid / relu,
    no ``dtype`` override) that diagonal is computed by hand at the cost of one batched
    step, for other cells it is taken from the full Jacobian. The backward pass costs one
    full Jacobian. Under ``jax.vmap`` the fallback's ``lax.cond`` becomes a select that
    runs the sequential scan for every example: batch with ``fallback=False`` and check
    ``info.converged`` instead.

    Args:
      cell: any :class:`~recurrax.Cell` whose ``apply`` is differentiable in the carry.
      params: its parameters.
      xs: ``[T, input_size]``, ONE example, time-major, floating point.
      carry: the initial carry (any pytree); ``None`` means ``cell.initial_carry()``.
      method: ``"deer"`` (full Jacobian, Newton) or ``"quasi-deer"`` (diagonal Jacobian).
      length: the number of valid steps, as in :func:`recurrax.scan`.
      max_iters: the most Newton iterations (static).
      tol: the residual at which to stop; ``None`` means ``max(8 * eps, 1e-11)`` for the
        carry's dtype (``9.5e-7`` in float32, ``1e-11`` in float64), a few times the
        rounding noise of one step. The result is then within about ``tol / (1 - rho)`` of
        the sequential one, where ``rho < 1`` is how strongly the recurrence contracts.
      fallback: on non-convergence, return the sequential scan's result.

    Returns:
      ``(final_carry, ys, info)``: ``final_carry`` and ``ys`` ``[T, output_size]`` (zero
      past ``length``) as :func:`recurrax.scan` gives them, and a :class:`ParallelInfo`.

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> from recurrax._parallel import parallel_scan
      >>> cell = recurrax.gru(8)
      >>> params = cell.init(jax.random.key(0), 3)
      >>> xs = jax.random.normal(jax.random.key(1), (100, 3))
      >>> h, ys, info = parallel_scan(cell, params, xs, length=80)
      >>> h_seq, ys_seq = recurrax.scan(cell, params, xs, length=80)
      >>> bool(info.converged), bool(info.fell_back), bool(jnp.allclose(ys, ys_seq, atol=1e-5))
      (True, False, True)
    """
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a recurrax.Cell; got {type(cell).__name__}.")
    _check_options(method, max_iters, tol)
    xs = check_xs(cell, params, xs)
    T = xs.shape[0]
    carry = cell.initial_carry((), xs.dtype) if carry is None else check_carry(cell, carry, xs.dtype)
    if T == 0:  # nothing to run: only the outputs' shape, from one abstract step
        x = jax.ShapeDtypeStruct(xs.shape[1:], xs.dtype)
        y = jax.eval_shape(lambda x: cell.apply(params, carry, x)[1], x)
        ys = jax.tree.map(lambda y: jnp.zeros((0, *y.shape), y.dtype), y)
        return carry, ys, ParallelInfo(jnp.int32(0), jnp.bool_(True), jnp.zeros((), xs.dtype), jnp.bool_(False))
    valid = jnp.ones(T, bool) if length is None else jnp.arange(T) < check_length(length, T)
    tol = jnp.asarray(_default_tol(xs.dtype) if tol is None else tol, xs.dtype)
    static = (cell, method, max_iters, fallback)
    try:
        hash(static)
    except TypeError:  # a cell of unhashable callables: trace it every time instead
        return _parallel_scan(*static, params, xs, carry, valid, tol)
    return _parallel_scan_jit(*static, params, xs, carry, valid, tol)


def _parallel_scan(cell, method, max_iters, fallback, params, xs, carry, valid, tol):
    T = xs.shape[0]
    xs = jnp.where(valid[:, None], xs, 0)  # as scan does: padding never reaches anything
    s0, unravel = ravel_pytree(carry)
    tol = tol.astype(s0.dtype)

    spec = getattr(cell.apply, "spec", None)
    if isinstance(spec, _MinSpec):
        a, b = spec.coefficients(params, xs)
        a, b = jnp.where(valid[:, None], a, 1), jnp.where(valid[:, None], b, 0)
        S = _linear_recurrence(a, b.at[0].add(a[0] * s0))
        residual = _max_abs(a * _shift_in(s0, S) + b - S)
        info = ParallelInfo(jnp.int32(1), jnp.bool_(True), lax.stop_gradient(residual), jnp.bool_(False))
        return S[-1], jnp.where(valid[:, None], S, 0), info

    solve = _newton_solver(cell, unravel, method, max_iters, fallback)
    S, (iterations, converged) = solve(params, xs, s0, valid, tol)
    # The outputs, and the residual of what is returned, from one batched pass over the
    # states entering each step.
    new, ys = jax.vmap(lambda s, x: cell.apply(params, unravel(s), x))(_shift_in(s0, S), xs)
    new = jax.vmap(lambda c: ravel_pytree(c)[0])(new)
    residual = _max_abs(jnp.where(valid[:, None], new - S, 0))
    ys = jax.tree.map(lambda y: jnp.where(valid.reshape((T,) + (1,) * (y.ndim - 1)), y, 0), ys)
    fell_back = jnp.logical_and(fallback, ~converged)
    info = ParallelInfo(iterations, converged, lax.stop_gradient(residual), fell_back)
    return unravel(S[-1]), ys, info


# Compiled once per cell and options: the iterations' closures are rebuilt on every trace,
# so without jit every eager call would re-trace and re-compile its while_loop.
_parallel_scan_jit = jax.jit(_parallel_scan, static_argnums=(0, 1, 2, 3))
