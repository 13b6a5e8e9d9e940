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
    check_inputs,
    coarsest_float,
    compile_eager_calls,
    mask_padding,
    per_example_length,
    project,
)

METHODS = ("deer", "quasi-deer")


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
    """

    iterations: Array
    converged: Array
    residual: Array
    fell_back: Array


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


def _make_step(cell: Any, unravel: Callable):
    """The step on flattened states, an identity map at padding steps (``valid`` False)."""

    def step(params, s, x, valid):
        new, _ = cell.apply(params, unravel(s), x)
        return jnp.where(valid, ravel_pytree(new)[0], s)

    return step


def _make_linearise(cell: Any, unravel: Callable, step: Callable, diagonal: bool, by_hand: bool):
    """``(params, s, x, valid) -> (f(s, x), J)``: ``J`` ``[D, D]``, or its diagonal ``[D]``.

    The diagonal comes from the cell's ``step_jacobian_diagonal`` (``by_hand``, about one
    step's cost) or else from the full Jacobian (``D`` Jacobian-vector products).
    """

    def full(params, s, x, valid):
        J, F = jax.jacfwd(lambda s: (step(params, s, x, valid),) * 2, has_aux=True)(s)
        return F, J

    def hand(params, s, x, valid):
        (new, _), d = cell.step_jacobian_diagonal(params, unravel(s), project(cell, params, x))
        F, d = ravel_pytree(new)[0], ravel_pytree(d)[0]
        return jnp.where(valid, F, s), jnp.where(valid, d, jnp.ones_like(d))

    def diagonal_of_full(params, s, x, valid):
        F, J = full(params, s, x, valid)
        return F, jnp.diagonal(J)

    if not diagonal:
        return full
    return hand if by_hand else diagonal_of_full


def _max_abs(x: Array) -> Array:
    """``max |x|``, and ``inf`` if any entry is NaN.

    Not ``jnp.max``: XLA:CPU's vectorised max reduction can drop NaNs (it returned ``-inf``
    for arrays holding NaN), which would make a diverged iterate look converged.
    """
    return jnp.max(jnp.where(jnp.isnan(x), jnp.inf, jnp.abs(x)))


def _shift_in(s0: Array, S: Array) -> Array:
    """``(s_0, ..., s_{T-1})``: the state entering each step."""
    return jnp.concatenate([s0[None], S[:-1]], axis=0)


def _newton_solver(cell, unravel, method, max_iters, fallback, by_hand):
    """The trajectories ``S`` ``[n, T, D]`` of ``n`` examples as a function of
    ``(params, xs [n, T, I], s0 [n, D], valid [n, T], tol)``.

    A ``custom_vjp``: the forward pass iterates every example (jointly, until each one is
    done) and, if any did not converge, computes the whole batch by the sequential scan
    (one ``lax.cond`` for the batch); the backward pass is the implicit-function-theorem
    adjoint at the solution.
    """
    step = _make_step(cell, unravel)
    batched = jax.vmap(step, in_axes=(None, 0, 0, 0))
    linearise = jax.vmap(_make_linearise(cell, unravel, step, method != "deer", by_hand), in_axes=(None, 0, 0, 0))
    jacobian = jax.vmap(_make_linearise(cell, unravel, step, False, False), in_axes=(None, 0, 0, 0))

    def sequential(params, xs, s0, valid):
        def body(s, inputs):
            s = step(params, s, *inputs)
            return s, s

        return lax.scan(body, s0, (xs, valid))[1]

    def iterate(params, xs, s0, valid, tol):
        S, stats = jax.vmap(iterations, in_axes=(None, 0, 0, 0, None))(params, xs, s0, valid, tol)
        if fallback:
            S = lax.cond(jnp.all(stats[1]), lambda: S,
                         lambda: jax.vmap(sequential, in_axes=(None, 0, 0, 0))(params, xs, s0, valid))
        return S, stats

    def iterations(params, xs, s0, valid, tol):  # one example
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
        return S, (k, r <= tol)

    def fwd(params, xs, s0, valid, tol):
        S, stats = iterate(params, xs, s0, valid, tol)
        return (S, stats), (params, xs, s0, valid, tol, S)

    def adjoint(params, xs, s0, valid, S, S_bar):
        prev = _shift_in(s0, S)
        _, J = jacobian(params, prev, xs, valid)
        # lambda_t = dL/ds_t + J_{t+1}^T lambda_{t+1}, with lambda_{T+1} = 0
        K = jnp.concatenate([jnp.swapaxes(J[1:], -1, -2), jnp.zeros_like(J[:1])], axis=0)
        return prev, _linear_recurrence(K, S_bar, reverse=True)

    def bwd(res, cotangents):
        params, xs, s0, valid, tol, S = res
        prev, lam = jax.vmap(adjoint, in_axes=(None, 0, 0, 0, 0, 0))(params, xs, s0, valid, S, cotangents[0])
        every = jax.vmap(batched, in_axes=(None, 0, 0, 0))
        _, vjp = jax.vjp(lambda p, prev, xs: every(p, prev, xs, valid), params, prev, xs)
        params_bar, prev_bar, xs_bar = vjp(lam)
        # tol is passed as an argument (not closed over) so that it may be traced
        return params_bar, xs_bar, prev_bar[:, 0], None, jnp.zeros_like(tol)

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
      method: ``"deer"`` (full Jacobian, Newton) or ``"quasi-deer"`` (diagonal Jacobian).
      length: the number of valid steps, as in :func:`recurrax.scan` (a scalar or
        ``[*batch]``).
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
    """
    _check_options(method, max_iters, tol)
    xs, carry = check_inputs(cell, xs, carry)
    T, batch = xs.shape[0], xs.shape[1:-1]
    length = per_example_length(length, T, batch)
    # One example's shapes, for the abstract evaluations below.
    one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a)[len(batch):], jnp.result_type(a)), carry)
    x_one = jax.ShapeDtypeStruct(xs.shape[-1:], xs.dtype)
    if T == 0:  # nothing to run: only the outputs' shape, from one abstract step
        y = jax.eval_shape(lambda c, x: cell.apply(params, c, x)[1], one, x_one)
        ys = jax.tree.map(lambda y: jnp.zeros((0, *batch, *y.shape), y.dtype), y)
        info = ParallelInfo(jnp.zeros(batch, jnp.int32), jnp.ones(batch, bool), jnp.zeros(batch, xs.dtype),
                            jnp.zeros(batch, bool))
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
    static = (cell, method, max_iters, fallback)
    args = (params, flat(xs, 1), jax.tree.map(lambda a: flat(a, 0), carry), flat(length, 0), tol)
    run = _parallel_scan_jit if compile_eager_calls(static, *args) else _parallel_scan
    final, ys, info = run(*static, *args)
    unflat = lambda a, lead: a.reshape(a.shape[:lead] + batch + a.shape[lead + 1:])  # noqa: E731
    return (jax.tree.map(lambda a: unflat(a, 0), final), jax.tree.map(lambda a: unflat(a, 1), ys),
            jax.tree.map(lambda a: unflat(a, 0), info))


def _parallel_scan(cell, method, max_iters, fallback, params, xs, carry, length, tol):
    """``n`` examples: ``xs`` ``[T, n, I]``, carry leaves ``[n, ...]``, ``length`` ``[n]``."""
    T = xs.shape[0]
    xs, valid = mask_padding(xs, length)  # as in scan: padding never reaches anything
    _, unravel = ravel_pytree(jax.tree.map(lambda a: jnp.zeros(a.shape[1:], a.dtype), carry))
    s0 = jax.vmap(lambda c: ravel_pytree(c)[0])(carry)  # [n, D]
    tol = tol.astype(s0.dtype)
    xs_n, valid_n = jnp.swapaxes(xs, 0, 1), valid.T  # [n, T, ...]: one example per row

    if isinstance(cell, LinearRecurrence):
        linear = cell.linear_coefficients

        def exact(x, s0, v):  # one example
            flat = lambda tree: jnp.concatenate([leaf.reshape(T, -1) for leaf in jax.tree.leaves(tree)], -1)  # noqa: E731
            a, b = map(flat, linear(params, project(cell, params, x)))
            a, b = jnp.where(v[:, None], a, 1), jnp.where(v[:, None], b, 0)
            S = _linear_recurrence(a, b.at[0].add(a[0] * s0))
            return S, _max_abs(a * _shift_in(s0, S) + b - S)

        S, residual = jax.vmap(exact)(xs_n, s0, valid_n)
        n = residual.shape
        info = ParallelInfo(jnp.ones(n, jnp.int32), jnp.ones(n, bool), lax.stop_gradient(residual), jnp.zeros(n, bool))
        ys = jnp.where(valid[..., None], jnp.swapaxes(S, 0, 1), 0)
        return jax.vmap(unravel)(S[:, -1]), ys, info

    by_hand = method != "deer" and isinstance(cell, JacobianDiagonal)
    solve = _newton_solver(cell, unravel, method, max_iters, fallback, by_hand)
    S, (iterations, converged) = solve(params, xs_n, s0, valid_n, tol)

    def finish(S, s0, xs, valid):
        # The outputs, and the residual of what is returned, from one batched pass over
        # the states entering each step.
        new, ys = jax.vmap(lambda s, x: cell.apply(params, unravel(s), x))(_shift_in(s0, S), xs)
        new = jax.vmap(lambda c: ravel_pytree(c)[0])(new)
        residual = _max_abs(jnp.where(valid[:, None], new - S, 0))
        ys = jax.tree.map(lambda y: jnp.where(valid.reshape((T,) + (1,) * (y.ndim - 1)), y, 0), ys)
        return unravel(S[-1]), ys, residual

    final, ys, residual = jax.vmap(finish, out_axes=(0, 1, 0))(S, s0, xs_n, valid_n)
    # (stop_gradient: JAX has no derivative rule for reducing booleans, not even a zero one)
    fell_back = jnp.logical_and(fallback, ~jnp.all(lax.stop_gradient(converged)))
    fell_back = jnp.broadcast_to(fell_back, converged.shape)
    return final, ys, ParallelInfo(iterations, converged, lax.stop_gradient(residual), fell_back)


# For eager calls, compiled once per cell and options: the iterations' closures are
# rebuilt on every trace, so each eager call would otherwise re-trace its while_loop.
_parallel_scan_jit = jax.jit(_parallel_scan, static_argnums=(0, 1, 2, 3))
