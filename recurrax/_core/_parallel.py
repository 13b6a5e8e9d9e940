"""Parallel-in-time evaluation of a recurrence, and minGRU / minLSTM.

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

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from recurrax._core._base import Array, Carry, JacobianDiagonal, LinearRecurrence, Params
from recurrax._core._validate import (
    check_bool,
    check_inputs,
    coarsest_float,
    compile_eager_calls,
    per_example_length,
    project,
)

METHODS = ("deer", "quasi-deer", "quasi-deer-block", "elk")
# ELK's damping: the weight of ||x_t - s_t||^2 (the iterate) against the linearised
# residual; the filter's covariances stay below about 1 / ELK_DAMPING, so its iterates
# stay finite where DEER's overflow. 1e-4 (the Kalman gain 1e-4 is not lost to rounding in
# float32) measured best of 1e-8, 1e-4 on benchmarks/parallel_methods.py.
ELK_DAMPING = 1e-4


class ParallelInfo(NamedTuple):
    """What :func:`parallel_scan` did, per example: every field is a JAX array of the batch
    shape (a scalar for one example), so it works under jit.

    Attributes:
      iterations: ``int32``, Newton iterations (linear solves) used; 1 for the exact
        single pass of ``min_gru`` / ``min_lstm``.
      converged: ``bool``, whether the iterations reached ``tol`` (a NaN or inf iterate
        counts as not converged).
      residual: the returned trajectory's ``max_t ||s_t - f(s_{t-1}, x_t)||_inf`` over the
        valid steps (flattened carry), whichever way it was computed.
      fell_back: ``bool``, whether the result came from the sequential ``recurrax.scan``
        because the iterations did not converge: in a batch, for every example when any
        one of them did not.
      lyapunov: the largest Lyapunov exponent estimated along the last iterate: the mean
        log growth per step of the product of the step Jacobians the method linearised
        with (``log ||J_T ... J_1|| / T`` over the valid steps that do not start a
        sequence). Negative: perturbations decay, and Newton converges in few iterations;
        positive: they grow like ``exp(lyapunov * T)`` and plain Newton may need ``T``
        iterations or overflow (docs/parallel.md). For ``"quasi-deer"`` and
        ``"quasi-deer-block"`` it is that of the (block) diagonal approximation, which
        governs their linear solves, not the system's.
    """

    iterations: Array
    converged: Array
    residual: Array
    fell_back: Array
    lyapunov: Array


# -- where this call's steps sit in the whole sequence -----------------------------------


class _Time(NamedTuple):
    """The time axis: all steps are here (``axis`` None), or this device holds one block of
    consecutive steps of a sequence split over the ``shard_map`` axis ``axis``."""

    axis: Any = None
    flipped: bool = False  # running order is from the last step to the first (reverse=True)


def _devices(time: _Time) -> int:
    return 1 if time.axis is None else lax.axis_size(time.axis)


def _position(time: _Time, backwards: bool = False) -> Any:
    """This device's place in running order (``backwards``: counted from the end)."""
    if time.axis is None:
        return 0
    i = lax.axis_index(time.axis)
    return _devices(time) - 1 - i if time.flipped != backwards else i


def _from_neighbour(x: Any, time: _Time, k: int = 1, backwards: bool = False) -> Any:
    """``x`` of the device ``k`` places earlier in running order (``backwards``: later), by
    one ``ppermute``; zeros where there is none (and without devices)."""
    D = _devices(time)
    if k >= D:
        return jax.tree.map(jnp.zeros_like, x)
    up = time.flipped == backwards  # the device k places earlier has the lower index
    perm = [(j, j + k) if up else (j + k, j) for j in range(D - k)]
    return jax.tree.map(lambda a: lax.ppermute(a, time.axis, perm), x)


def _reduce(x: Array, time: _Time, op: Callable) -> Array:
    """``op`` (``lax.pmax``, ``lax.psum``) over the devices."""
    return x if time.axis is None else op(x, time.axis)


def _from_last(x: Any, time: _Time) -> Any:
    """The last device's (in running order) ``x``, on every device."""
    if time.axis is None:
        return x
    last = _position(time) == _devices(time) - 1
    return jax.tree.map(lambda a: lax.psum(jnp.where(last, a, jnp.zeros_like(a)), time.axis), x)


def _varying(x: Array, time: _Time) -> Array:
    """``x`` typed as varying over the devices (a loop carry that starts the same everywhere
    but becomes each device's own must be typed so from the start)."""
    if time.axis is None or time.axis in jax.typeof(x).manual_axis_type.varying:
        return x
    return lax.pcast(x, (time.axis,), to="varying")


def _where(cond: Any, a: Any, b: Any) -> Any:
    return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


def _scan_across(combine: Callable, elems: Any, time: _Time, backwards: bool = False) -> Any:
    """``lax.associative_scan(combine, elems, reverse=backwards)`` over the whole sequence.

    Split over ``D`` devices, each device scans its own steps; the devices' totals (one
    element each) are combined by an exclusive doubling scan over the devices (``1 +
    ceil(log2(D - 1))`` ppermutes of one element); each device then composes what comes
    before it with its own prefixes. Nothing of length ``T`` crosses devices.
    """
    out = lax.associative_scan(combine, elems, reverse=backwards)
    D = _devices(time)
    if D == 1:
        return out
    q = _position(time, backwards)
    total = jax.tree.map(lambda a: a[0] if backwards else a[-1], out)
    before = _from_neighbour(total, time, 1, backwards)  # all devices before q: so far only q - 1
    span = 1
    while span < D - 1:
        more = _from_neighbour(before, time, span, backwards)
        before = _where(q > span, combine(more, before), before)
        span *= 2
    joined = combine(jax.tree.map(lambda b, a: jnp.broadcast_to(b, a.shape), before, out), out)
    return _where(q > 0, joined, out)


# -- linear recurrences -------------------------------------------------------------------


def _apply(A: Array, v: Array) -> Array:
    """``A v``: ``A`` elementwise (diagonal, ``A.ndim == v.ndim``) or a stack of matrices."""
    return A * v if A.ndim == v.ndim else (A @ v[..., None])[..., 0]


def _affine(first, then):
    """The affine map ``x -> A x + b`` of ``first`` followed by that of ``then``."""
    (A1, b1), (A2, b2) = first, then
    return (A2 * A1 if A1.ndim == b1.ndim else A2 @ A1), _apply(A2, b1) + b2


def _linear_recurrence(A: Array, b: Array, time: _Time, backwards: bool = False) -> Array:
    """All ``x_t = A_t x_{t-1} + b_t`` from ``x_0 = 0`` (backwards: ``x_t = A_t x_{t+1} + b_t``).

    ``A`` is ``[T, D, D]`` (or ``[T, m, k, k]`` blocks with ``b`` ``[T, m, k]``), or ``[T, D]``
    for diagonal matrices; ``b`` is ``[T, D]``. Step ``t`` is the affine map
    ``x -> A_t x + b_t``; composing maps is associative, so ``associative_scan`` forms every
    prefix composition, whose offset is ``x_t``.
    """
    return _scan_across(_affine, (A, b), time, backwards)[1]


def _log_growth(A: Array, time: _Time) -> Array:
    """``max log ||A_T ... A_1||`` over the blocks (diagonal: over the entries): the product
    is formed by an associative scan of matrices kept at norm 1, their logs summed aside."""
    if A.ndim == 2:
        return jnp.max(_reduce(jnp.sum(jnp.log(jnp.abs(A)), 0), time, lax.psum))

    def normalised(M, log):
        n = jnp.maximum(jnp.sqrt(jnp.sum(M * M, axis=(-2, -1))), jnp.finfo(M.dtype).tiny)
        return M / n[..., None, None], log + jnp.log(n)

    def combine(first, then):
        return normalised(then[0] @ first[0], first[1] + then[1])

    out = _scan_across(combine, normalised(A, jnp.zeros(A.shape[:-2], A.dtype)), time)
    return jnp.max(_from_last(out[1][-1], time))


def _elk_step(A: Array, b: Array, S: Array, time: _Time) -> Array:
    """ELK's step (Gonzalez et al. 2024): the Levenberg-Marquardt problem

        minimise  sum_t ||x_t - A_t x_{t-1} - b_t||^2 + ELK_DAMPING * sum_t ||x_t - s_t||^2

    (the linearised residual plus a trust-region penalty around the iterate ``S``) is the
    inference problem of the dynamics ``x_t = A_t x_{t-1} + b_t + w_t``, ``w_t ~ N(0, I)``,
    observing ``s_t = x_t + v_t``, ``v_t ~ N(0, I / ELK_DAMPING)``. As in the authors'
    implementation the step is the Kalman FILTER's mean: ``x_t`` solves the problem cut
    off at step ``t`` (steps ``<= t`` only, so exactness spreads forwards from the first
    step as in Newton's method, instead of being pulled back from later steps), computed in parallel by
    the associative filtering elements of Sarkka & Garcia-Fernandez (2021). With damping
    0 it is the Newton (DEER) step; with damping > 0 the filter's covariances stay below
    about ``1 / damping``, so the step stays finite where products of the ``A_t`` overflow.
    Layouts as in :func:`_linear_recurrence`.
    """
    kappa = ELK_DAMPING / (1 + ELK_DAMPING)  # the Kalman gain: observation matrix and noises are multiples of I
    if A.ndim == b.ndim:  # diagonal: every unit is its own scalar filter
        mm, tr, inv, eye = jnp.multiply, lambda M: M, lambda M: 1 / M, jnp.ones_like
    else:
        mm, tr, inv = jnp.matmul, lambda M: jnp.swapaxes(M, -1, -2), jnp.linalg.inv
        eye = lambda M: jnp.broadcast_to(jnp.eye(M.shape[-1], dtype=M.dtype), M.shape)  # noqa: E731
    # The filtering elements (A, b, C, eta, J) of each step given the one before.
    elems = ((1 - kappa) * A, (1 - kappa) * b + kappa * S, (1 - kappa) * eye(A), kappa * _apply(tr(A), S - b),
             kappa * mm(tr(A), A))

    def combine(i, j):
        Ai, bi, Ci, ei, Ji = i
        Aj, bj, Cj, ej, Jj = j
        CJ = mm(Ci, Jj)
        M = inv(eye(CJ) + CJ)
        AjM, AiN = mm(Aj, M), mm(tr(Ai), tr(M))  # (I + J C)^-1 = ((I + C J)^-1)^T: C and J are symmetric
        return (mm(AjM, Ai), _apply(AjM, bi + _apply(Ci, ej)) + bj, mm(mm(AjM, Ci), tr(Aj)) + Cj,
                _apply(AiN, ej - _apply(Jj, bi)) + ei, mm(mm(AiN, Jj), Ai) + Ji)

    return _scan_across(combine, elems, time)[1]  # the filtered means


# -- the step, its Jacobian, and its (block) diagonal -----------------------------------------


def _make_step(cell: Any, unravel: Callable):
    """The step on flattened states, an identity map at padding steps (``valid`` False)."""

    def step(params, s, x, valid):
        new, _ = cell.apply(params, unravel(s), x)
        return jnp.where(valid, ravel_pytree(new)[0], s)

    return step


def _make_linearise(cell: Any, unravel: Callable, step: Callable, form: int, by_hand: bool):
    """``(params, s, x, valid) -> (f(s, x), J)``: ``J`` ``[D, D]`` (``form`` 0), its diagonal
    ``[D]`` (``form`` 1), or its ``[m, k, k]`` diagonal blocks (``form`` k > 1, the carry's
    k leaves of m entries each; block i couples entry i of every leaf).

    The diagonal comes from the cell's ``step_jacobian_diagonal`` (``by_hand``, about one
    step's cost) or else from the full Jacobian (``D`` Jacobian-vector products), as do
    the blocks.
    """

    def full(params, s, x, valid):
        J, F = jax.jacfwd(lambda s: (step(params, s, x, valid),) * 2, has_aux=True)(s)
        return F, J

    def hand(params, s, x, valid):
        (new, _), d = cell.step_jacobian_diagonal(params, unravel(s), project(cell, params, x))
        F, d = ravel_pytree(new)[0], ravel_pytree(d)[0]
        return jnp.where(valid, F, s), jnp.where(valid, d, jnp.ones_like(d))

    def blocks(params, s, x, valid):
        F, J = full(params, s, x, valid)
        if form == 1:
            return F, jnp.diagonal(J)
        m = J.shape[0] // form
        return F, jnp.einsum("aibi->iab", J.reshape(form, m, form, m))

    if form == 0:
        return full
    return hand if by_hand else blocks


def _layout(form: int):
    """``(to, back)``: flattened states ``[..., D]`` to the layout their Jacobian acts on
    (``[..., m, k]`` for ``k x k`` blocks) and back."""
    if form <= 1:
        return (lambda s: s), (lambda s: s)
    return (lambda s: jnp.swapaxes(s.reshape(s.shape[:-1] + (form, -1)), -1, -2),
            lambda s: jnp.swapaxes(s, -1, -2).reshape(s.shape[:-2] + (-1,)))


def _identity_like(J: Array) -> Array:
    """The identity in ``J``'s form (per step: ``[D]`` ones, ``[D, D]`` or ``[m, k, k]``)."""
    return jnp.ones_like(J) if J.ndim == 2 else jnp.broadcast_to(jnp.eye(J.shape[-1], dtype=J.dtype), J.shape)


def _max_abs(x: Array) -> Array:
    """``max |x|``, and ``inf`` if any entry is NaN.

    Not ``jnp.max``: XLA:CPU's vectorised max reduction can drop NaNs (it returned ``-inf``
    for arrays holding NaN), which would make a diverged iterate look converged.
    """
    return jnp.max(jnp.where(jnp.isnan(x), jnp.inf, jnp.abs(x)))


def _shift_in(S: Array, time: _Time) -> Array:
    """``(s_0, ..., s_{T-1})`` with ``s_0`` the previous device's last state, or zeros where
    there is none: the callers put the initial carry at every segment start, the first step
    among them."""
    return jnp.concatenate([_from_neighbour(S[-1], time)[None], S[:-1]], axis=0)


def _entering(s0: Array, S: Array, starts: Array, time: _Time) -> Array:
    """The state entering each step: the initial carry where a segment starts, else the last state."""
    return jnp.where(starts[:, None], s0, _shift_in(S, time))


def _newton_solver(cell, unravel, method, form, max_iters, fallback, by_hand, time):
    """The trajectories ``S`` ``[n, T, D]`` of ``n`` examples as a function of
    ``(params, xs [n, T, I], s0 [n, D], valid [n, T], starts [n, T], tol)``, in running order
    (``starts``: the steps entered with ``s0``, the first one among them).

    A ``custom_vjp``: the forward pass iterates every example (jointly, until each one is
    done) and, if any did not converge, computes the whole batch by the sequential scan
    (one ``lax.cond`` for the batch); the backward pass is the implicit-function-theorem
    adjoint at the solution. Split over devices (``time.axis``) every linear solve, the
    convergence test, the fallback and the adjoint span the whole sequence.
    """
    step = _make_step(cell, unravel)
    batched = jax.vmap(step, in_axes=(None, 0, 0, 0))
    linearise = jax.vmap(_make_linearise(cell, unravel, step, form, by_hand), in_axes=(None, 0, 0, 0))
    jacobian = jax.vmap(_make_linearise(cell, unravel, step, 0, False), in_axes=(None, 0, 0, 0))
    to, back = _layout(form)

    def sequential(params, xs, s0, valid, starts):  # one example, device after device
        def run(s_in):
            def body(s, inputs):
                x, v, start = inputs
                s = step(params, jnp.where(start, s0, s), x, v)
                return s, s

            return lax.scan(body, s_in, (xs, valid, starts))[1]

        # Round r gives device r (in running order) its incoming state; D - 1 rounds.
        s_in = lax.fori_loop(0, _devices(time) - 1, lambda _, s: _from_neighbour(run(s)[-1], time),
                             _varying(s0, time))
        return run(s_in)

    def iterate(params, xs, s0, valid, starts, tol):
        S, stats = jax.vmap(iterations, in_axes=(None, 0, 0, 0, 0, None))(params, xs, s0, valid, starts, tol)
        if fallback:
            S = lax.cond(jnp.all(stats[1]), lambda: S,
                         lambda: jax.vmap(sequential, in_axes=(None, 0, 0, 0, 0))(params, xs, s0, valid, starts))
        return S, stats

    def iterations(params, xs, s0, valid, starts, tol):  # one example
        def lin(S):
            # The linear recurrence S_new = A S_new(shifted) + b of the Newton step around S:
            # A = J, zero where a segment starts (the entering state is s0, exact).
            prev = _entering(s0, S, starts, time)
            F, J = linearise(params, prev, xs, valid)
            A = jnp.where(starts.reshape((-1,) + (1,) * (J.ndim - 1)), 0, J)
            return (A, to(F) - _apply(A, to(prev))), _reduce(_max_abs(S - F), time, lax.pmax)

        def go(k, r):
            return (k < max_iters) & jnp.isfinite(r) & (r > tol)

        def body(state):
            k, S, (A, b), _, _ = state
            S = back(_elk_step(A, b, to(S), time) if method == "elk" else _linear_recurrence(A, b, time))
            linear, r = lin(S)
            return k + 1, S, linear, r, go(k + 1, r)

        S = _varying(jnp.broadcast_to(s0, (xs.shape[0], s0.shape[0])), time)  # initial guess: s_0 throughout
        linear, r = lin(S)
        k = jnp.int32(0)
        k, S, (A, _), r, _ = lax.while_loop(lambda state: state[-1], body, (k, S, linear, r, go(k, r)))
        # The Lyapunov exponent of the last linearisation, over the valid steps inside a segment.
        inside = valid & ~starts
        A = jnp.where(inside.reshape((-1,) + (1,) * (A.ndim - 1)), A, _identity_like(A))
        count = _reduce(jnp.sum(inside), time, lax.psum)
        lyapunov = jnp.where(count > 0, _log_growth(A, time) / jnp.maximum(count, 1).astype(A.dtype), 0)
        return S, (k, r <= tol, lyapunov)

    def fwd(params, xs, s0, valid, starts, tol):
        S, stats = iterate(params, xs, s0, valid, starts, tol)
        return (S, stats), (params, xs, s0, valid, starts, tol, S)

    def adjoint(params, xs, s0, valid, starts, S, S_bar):
        prev = _entering(s0, S, starts, time)
        _, J = jacobian(params, prev, xs, valid)
        J = jnp.where(starts[:, None, None], 0, J)  # nothing flows back across a segment start
        # lambda_t = dL/ds_t + J_{t+1}^T lambda_{t+1}, with lambda_{T+1} = 0
        K = jnp.concatenate([J[1:], _from_neighbour(J[0], time, backwards=True)[None]], axis=0)
        return _linear_recurrence(jnp.swapaxes(K, -1, -2), S_bar, time, backwards=True)

    def bwd(res, cotangents):
        params, xs, s0, valid, starts, tol, S = res
        lam = jax.vmap(adjoint, in_axes=(None, 0, 0, 0, 0, 0, 0))(params, xs, s0, valid, starts, S, cotangents[0])
        every = jax.vmap(batched, in_axes=(None, 0, 0, 0))
        entering = jax.vmap(lambda s0, S, starts: _entering(s0, S, starts, time))
        _, vjp = jax.vjp(lambda p, s0, xs: every(p, entering(s0, S, starts), xs, valid), params, s0, xs)
        params_bar, s0_bar, xs_bar = vjp(lam)
        # params and s0 are the same on every device (unless they vary over the axis): sum
        # the devices' parts of their gradients.
        params_bar, s0_bar = (jax.tree.map(lambda g, p: _sum_if_shared(g, p, time), *pair)
                              for pair in ((params_bar, params), (s0_bar, s0)))
        # tol is passed as an argument (not closed over) so that it may be traced
        return params_bar, xs_bar, s0_bar, None, None, jnp.zeros_like(tol)

    solve = jax.custom_vjp(iterate)
    solve.defvjp(fwd, bwd)
    return solve


def _sum_if_shared(g: Array, primal: Array, time: _Time) -> Array:
    """``g`` summed over the devices when ``primal`` does not vary over them (unless the
    differentiation already summed it: the transpose of using a shared value on every device)."""
    if time.axis is None or time.axis in jax.typeof(primal).manual_axis_type.varying:
        return g
    return lax.psum(g, time.axis) if time.axis in jax.typeof(g).manual_axis_type.varying else g


def _check_options(method, max_iters, tol, axis_name):
    if axis_name is not None:
        try:
            lax.axis_size(axis_name)
        except NameError:
            raise ValueError(f"axis_name={axis_name!r} is not an axis here: call parallel_scan inside jax.shard_map "
                             f"over a mesh with that axis, xs split along time over it (docs/scaling.md).") from None
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}; got {method!r}.")
    if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1:
        raise ValueError(f"max_iters must be a positive int; got {max_iters!r}.")
    if tol is not None and not isinstance(tol, jax.core.Tracer) and not float(tol) > 0:
        raise ValueError(f"tol must be a positive number (or None for the dtype's default); got {tol!r}.")


def _default_tol(dtype: Any) -> float:
    # A few times the rounding noise of one step (the batched evaluation of f differs from
    # the sequential one in the last bits): 9.5e-7 in float32, 1e-11 in float64. At most
    # 2^-6, which is 2 eps in bfloat16: there a step's noise is only its output's rounding
    # (measured below eps / 2; the matmuls accumulate in float32), and 8 eps = 0.0625 let a
    # single iteration pass 0.05 away from scan, 8 times scan's own bfloat16 error.
    return min(max(8 * float(jnp.finfo(dtype).eps), 1e-11), 2.0**-6)


@functools.lru_cache(maxsize=64)
def _step_tol(cell: Any, treedef: Any, specs: tuple) -> float:
    """:func:`_default_tol` of the coarsest float one step computes in (carry, inputs,
    params or the cell's own ``dtype``): a cell with ``dtype=bfloat16`` cannot reach a float32
    tolerance, and would run ``max_iters`` iterations and fall back. Cached: tracing the
    step costs more than a small eager call."""
    return _default_tol(coarsest_float(lambda p, c, x: cell.apply(p, c, x), *jax.tree.unflatten(treedef, specs)))


def parallel_scan(
    cell: Any,
    params: Params,
    xs: Array,
    carry: Carry | None = None,
    *,
    method: str = "deer",
    length: Any = None,
    reverse: bool = False,
    resets: Any = None,
    max_iters: int = 100,
    tol: Any = None,
    fallback: bool = True,
    axis_name: Any = None,
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
    as in :func:`recurrax.scan`, and their outputs are zero. ``reverse`` and ``resets`` mean
    what they mean for :func:`recurrax.scan`: backwards, the valid prefix runs from
    ``length - 1`` down to 0 (``ys`` aligned with ``xs``, ``final_carry`` the carry after step
    0); a reset makes the carry entering that step the initial carry, so the step's
    Jacobian is zero there and the linear recurrence restarts from ``carry`` (backwards, a
    segment starts at its last step); resets on padding are ignored.

    Methods: ``"deer"`` (Newton, full Jacobians); ``"quasi-deer"`` (their diagonal);
    ``"quasi-deer-block"`` (for a carry of ``k`` leaves of ``m`` entries each, such as the
    LSTM's ``(h, c)``: the ``m`` blocks ``k x k`` coupling entry ``i`` of every leaf, from the
    full Jacobian); ``"elk"`` (Levenberg-Marquardt by a parallel Kalman filter, Gonzalez et
    al. 2024: the Newton step regularised by ``1e-4 * ||S_new - S||^2``, so that it stays
    finite where products of Jacobians overflow; full Jacobians). docs/parallel.md
    compares them.

    Sequence parallelism (``axis_name``): inside ``jax.shard_map`` with ``xs`` (and
    ``resets``) split along time over the mesh axis ``axis_name``, each device holding
    consecutive steps, it solves the WHOLE sequence: each linear recurrence is scanned on
    every device, the devices' affine maps are combined across devices in ``1 +
    ceil(log2(D - 1))`` ``ppermute`` exchanges of one map each, and each device replays its
    steps from its incoming state; the convergence test, ``info``, the fallback (device
    after device) and the gradients span the whole sequence. It returns this device's
    part of ``ys``, the whole sequence's ``final_carry`` and ``info`` on every device, and
    equals the unsharded call. ``length`` counts steps of the whole sequence; ``carry``
    and ``params`` are the same on every device. docs/scaling.md says what it costs.

    A cell with ``linear_coefficients`` (docs/cells.md; ``min_gru`` and ``min_lstm``) is a
    linear recurrence ``h_t = a_t * h_{t-1} + b_t``, evaluated exactly by a single
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
    in the scan; for a cell with ``step_jacobian_diagonal`` (docs/cells.md: every built-in
    ``rnn``, ``lstm`` and ``gru`` with tanh / sigmoid / relu and no ``dtype`` override, and
    stacks of them) that diagonal is computed at the cost of one batched
    step, for other cells it is taken from the full Jacobian. The backward pass costs one
    full Jacobian.

    The batch form (``xs`` ``[T, *batch, input_size]``, as for :func:`recurrax.scan`) gives
    each example what the one-example form gives it, except that the examples iterate
    together until the last one is done and the fallback is decided for the whole batch
    (one ``lax.cond``: the sequential scan runs only when some example did not converge).
    Prefer it to ``jax.vmap``, under which that ``lax.cond`` becomes a select that runs the
    sequential scan for every example on every call.

    Args:
      cell: any cell whose ``apply`` is differentiable in the carry.
      params: its parameters.
      xs: ``[T, input_size]`` (one example) or ``[T, *batch, input_size]`` (a time-major
        batch), floating point.
      carry: the initial carry (any pytree, with the batch dimensions); ``None`` means
        ``cell.initial_carry(batch)``.
      method: ``"deer"`` (full Jacobian, Newton), ``"quasi-deer"`` (diagonal Jacobian),
        ``"quasi-deer-block"`` (block-diagonal Jacobian) or ``"elk"`` (damped Newton).
      length: the number of valid steps, as in :func:`recurrax.scan` (a scalar or
        ``[*batch]``); with ``axis_name``, of the whole sequence.
      reverse: run from the last valid step to the first, as in :func:`recurrax.scan`.
      resets: ``None`` or bool ``[T, *batch]`` (with ``axis_name``: this device's steps):
        True where a new sequence starts, entered with the initial carry.
      max_iters: the most Newton iterations (static).
      tol: the residual at which to stop; ``None`` means ``8 * eps``, clipped to
        ``[1e-11, 2**-6]``, of the coarsest float the step computes in (carry, inputs,
        params or a ``dtype`` override): ``9.5e-7`` in float32, ``1e-11`` in float64,
        ``2**-6 = 0.0156`` in bfloat16, a few times the rounding noise of one step. The
        result is then within about ``tol / (1 - rho)`` of the sequential one, where
        ``rho < 1`` is how strongly the recurrence contracts; in bfloat16 that was at most
        0.009 (``T = 300``, ``H = 8``), about as close as bfloat16's ``scan`` is to float32's.
        States beyond about 4 in magnitude round by more than that in bfloat16: iterations
        may then stop unconverged and fall back (``info`` says so); pass a larger ``tol``.
      fallback: on non-convergence, return the sequential scan's result (for the whole
        batch).
      axis_name: ``None``, or the ``jax.shard_map`` mesh axis over which ``xs`` is split
        along time (static).

    Returns:
      ``(final_carry, ys, info)``: ``final_carry`` and ``ys`` ``[T, *batch, output_size]``
      (zero past ``length``) as :func:`recurrax.scan` gives them, and a :class:`ParallelInfo`
      with fields of shape ``batch``.

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> cell = recurrax.GRU(8)
      >>> params = cell.init(jax.random.key(0), 3)
      >>> xs = jax.random.normal(jax.random.key(1), (100, 3))
      >>> h, ys, info = recurrax.parallel_scan(cell, params, xs, length=80)
      >>> h_seq, ys_seq = recurrax.scan(cell, params, xs, length=80)
      >>> bool(info.converged), bool(info.fell_back), bool(jnp.allclose(ys, ys_seq, atol=1e-5))
      (True, False, True)

      A time-major batch, with a length per example:

      >>> xb = jax.random.normal(jax.random.key(2), (30, 4, 3))
      >>> h, ys, info = recurrax.parallel_scan(cell, params, xb, length=jnp.array([30, 20, 1, 0]))
      >>> ys.shape, info.converged.shape, bool(info.converged.all())
      ((30, 4, 8), (4,), True)

      Split along time over the devices of a mesh (here however many there are; each
      holds ``100 / D`` consecutive steps when ``D`` divides 100):

      >>> import numpy as np
      >>> from jax.sharding import Mesh, PartitionSpec as P
      >>> mesh = Mesh(np.array(jax.devices()[:1]), ("time",))
      >>> sharded = jax.jit(jax.shard_map(  # under jit: shard_map alone runs op by op
      ...     lambda xs: recurrax.parallel_scan(cell, params, xs, length=80, axis_name="time"),
      ...     mesh=mesh, in_specs=P("time"), out_specs=(P(), P("time"), P())))
      >>> h, ys, info = sharded(xs)
      >>> bool(jnp.allclose(ys, ys_seq, atol=1e-5)), bool(jnp.allclose(h, h_seq, atol=1e-5))
      (True, True)
    """
    _check_options(method, max_iters, tol, axis_name)
    reverse = check_bool("reverse", reverse)
    xs, carry = check_inputs(cell, xs, carry)
    L, batch = xs.shape[0], xs.shape[1:-1]  # L: this device's steps
    T = L * (1 if axis_name is None else lax.axis_size(axis_name))
    length = per_example_length(length, T, batch)
    resets = _check_resets(resets, xs)
    form = _form(method, carry, len(batch))
    # One example's shapes, for the abstract evaluations below.
    one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a)[len(batch):], jnp.result_type(a)), carry)
    x_one = jax.ShapeDtypeStruct(xs.shape[-1:], xs.dtype)
    if T == 0:  # nothing to run: only the outputs' shape, from one abstract step
        y = jax.eval_shape(lambda c, x: cell.apply(params, c, x)[1], one, x_one)
        ys = jax.tree.map(lambda y: jnp.zeros((0, *batch, *y.shape), y.dtype), y)
        zeros = jnp.zeros(batch, xs.dtype)
        info = ParallelInfo(jnp.zeros(batch, jnp.int32), jnp.ones(batch, bool), zeros, jnp.zeros(batch, bool), zeros)
        return carry, ys, info
    if tol is None:
        specs, treedef = jax.tree.flatten((jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), params), one, x_one))
        try:
            tol = _step_tol(cell, treedef, tuple(specs))
        except TypeError:  # an unhashable cell: no cache
            tol = _step_tol.__wrapped__(cell, treedef, tuple(specs))
    tol = jnp.asarray(tol, xs.dtype)
    # The examples side by side on one axis: [T, n, ...] (n = 1 for one example).
    n = math.prod(batch)
    flat = lambda a, lead: a.reshape(a.shape[:lead] + (n,) + a.shape[lead + len(batch):])  # noqa: E731
    static = (cell, method, form, max_iters, fallback, reverse, axis_name)
    args = (params, flat(xs, 1), jax.tree.map(lambda a: flat(a, 0), carry), flat(length, 0),
            None if resets is None else flat(resets, 1), tol)
    run = _parallel_scan_jit if compile_eager_calls(static, *args) else _parallel_scan
    final, ys, info = run(*static, *args)
    unflat = lambda a, lead: a.reshape(a.shape[:lead] + batch + a.shape[lead + 1:])  # noqa: E731
    return (jax.tree.map(lambda a: unflat(a, 0), final), jax.tree.map(lambda a: unflat(a, 1), ys),
            jax.tree.map(lambda a: unflat(a, 0), info))


def _check_resets(resets: Any, xs: Array) -> Array | None:
    """``resets``: ``None`` or bool ``[T, *batch]`` (this device's steps), as an array."""
    if resets is None:
        return None
    shape = tuple(xs.shape[:-1])
    if tuple(jnp.shape(resets)) != shape:
        raise ValueError(f"resets must be [T, *batch] = {list(shape)} (one flag per step and example of xs "
                         f"{list(xs.shape)}); got shape {list(jnp.shape(resets))}.")
    if jnp.result_type(resets) != jnp.bool_:
        raise TypeError(f"resets must be bool (True where a new sequence starts); got {jnp.result_type(resets)}. "
                        f"Pass resets != 0 or resets.astype(bool).")
    return jnp.asarray(resets)


def _form(method: str, carry: Any, batch_dims: int) -> int:
    """The Jacobian's form for ``method``: 0 full, 1 diagonal, ``k`` ``k x k`` blocks."""
    if method in ("deer", "elk"):
        return 0
    if method == "quasi-deer":
        return 1
    sizes = {math.prod(jnp.shape(leaf)[batch_dims:]) for leaf in jax.tree.leaves(carry)}
    if len(sizes) != 1:
        raise ValueError(f'method="quasi-deer-block" couples entry i of every carry leaf, so the leaves must have '
                         f'one size; got sizes {sorted(sizes)}. Use "quasi-deer" or "deer" for this cell.')
    return len(jax.tree.leaves(carry))


def _parallel_scan(cell, method, form, max_iters, fallback, reverse, axis_name, params, xs, carry, length, resets,
                   tol):
    """``n`` examples: ``xs`` ``[L, n, I]`` (this device's steps), carry leaves ``[n, ...]``,
    ``length`` ``[n]``, ``resets`` ``[L, n]`` or None."""
    L = xs.shape[0]
    time = _Time(axis_name, reverse)
    # valid and starts [L, n] in index order: steps before length (counted over the whole
    # sequence), and where a segment starts in running order (backwards: at its last step,
    # the one before the next reset); flags on padding are dropped.
    t = jnp.arange(L, dtype=jnp.int32) + (0 if axis_name is None else lax.axis_index(axis_name) * L)
    valid = t[:, None] < length[None]
    xs = jnp.where(valid[..., None], xs, jnp.zeros((), xs.dtype))  # as in scan: padding never reaches anything
    starts = jnp.zeros_like(valid) if resets is None else resets
    if reverse:
        after = _from_neighbour(starts[0].astype(jnp.int8), _Time(axis_name), backwards=True).astype(bool)
        starts = jnp.concatenate([starts[1:], after[None]])
    starts = starts & valid
    if reverse:  # from here on in running order
        xs, valid, starts = xs[::-1], valid[::-1], starts[::-1]
    starts = starts.at[0].set(starts[0] | (_position(time) == 0))  # the first step is entered with the carry

    _, unravel = ravel_pytree(jax.tree.map(lambda a: jnp.zeros(a.shape[1:], a.dtype), carry))
    s0 = jax.vmap(lambda c: ravel_pytree(c)[0])(carry)  # [n, D]
    tol = tol.astype(s0.dtype)
    xs_n, valid_n, starts_n = jnp.swapaxes(xs, 0, 1), valid.T, starts.T  # [n, L, ...]: one example per row

    if isinstance(cell, LinearRecurrence):
        linear = cell.linear_coefficients

        def exact(x, s0, v, start):  # one example
            flat = lambda tree: jnp.concatenate([leaf.reshape(L, -1) for leaf in jax.tree.leaves(tree)], -1)  # noqa: E731
            a, b = map(flat, linear(params, project(cell, params, x)))
            a, b = jnp.where(v[:, None], a, 1), jnp.where(v[:, None], b, 0)
            entered = jnp.where(start[:, None], 0, a)  # a segment start is entered with s0
            S = _linear_recurrence(entered, b + jnp.where(start[:, None], a * s0[None], 0), time)
            residual = _reduce(_max_abs(lax.stop_gradient(a * _entering(s0, S, start, time) + b - S)), time, lax.pmax)
            inside = (v & ~start)[:, None]
            count = _reduce(jnp.sum(inside[:, 0]), time, lax.psum)
            growth = jnp.max(_reduce(jnp.sum(jnp.where(inside, jnp.log(jnp.abs(a)), 0), 0), time, lax.psum))
            return S, residual, jnp.where(count > 0, growth / jnp.maximum(count, 1).astype(a.dtype), 0)

        S, residual, lyapunov = jax.vmap(exact)(xs_n, s0, valid_n, starts_n)
        n = residual.shape
        info = ParallelInfo(jnp.ones(n, jnp.int32), jnp.ones(n, bool), lax.stop_gradient(residual), jnp.zeros(n, bool),
                            lax.stop_gradient(lyapunov))
        ys = jnp.where(valid[..., None], jnp.swapaxes(S, 0, 1), 0)
        return jax.vmap(unravel)(_from_last(S[:, -1], time)), ys[::-1] if reverse else ys, info

    by_hand = form == 1 and isinstance(cell, JacobianDiagonal)
    solve = _newton_solver(cell, unravel, method, form, max_iters, fallback, by_hand, time)
    S, (iterations, converged, lyapunov) = solve(params, xs_n, s0, valid_n, starts_n, tol)

    def finish(S, s0, xs, valid, starts):
        # The outputs, and the residual of what is returned, from one batched pass over
        # the states entering each step.
        new, ys = jax.vmap(lambda s, x: cell.apply(params, unravel(s), x))(_entering(s0, S, starts, time), xs)
        new = jax.vmap(lambda c: ravel_pytree(c)[0])(new)
        residual = _reduce(_max_abs(lax.stop_gradient(jnp.where(valid[:, None], new - S, 0))), time, lax.pmax)
        ys = jax.tree.map(lambda y: jnp.where(valid.reshape((L,) + (1,) * (y.ndim - 1)), y, 0), ys)
        return ys, residual

    ys, residual = jax.vmap(finish, out_axes=(1, 0))(S, s0, xs_n, valid_n, starts_n)
    final = jax.vmap(unravel)(_from_last(S[:, -1], time))
    # (stop_gradient: JAX has no derivative rule for reducing booleans, not even a zero one)
    fell_back = jnp.logical_and(fallback, ~jnp.all(lax.stop_gradient(converged)))
    fell_back = jnp.broadcast_to(fell_back, converged.shape)
    info = ParallelInfo(iterations, converged, lax.stop_gradient(residual), fell_back, lax.stop_gradient(lyapunov))
    return final, jax.tree.map(lambda y: y[::-1], ys) if reverse else ys, info


# For eager calls, compiled once per cell and options: the iterations' closures are
# rebuilt on every trace, so each eager call would otherwise re-trace its while_loop.
_parallel_scan_jit = jax.jit(_parallel_scan, static_argnums=(0, 1, 2, 3, 4, 5, 6))
