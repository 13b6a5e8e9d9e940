"""Backpropagation through time, derived by hand (derivations in docs/bptt.md).

The gradient of a loss ``L`` with respect to a shared weight is a sum over time steps,

    dL/dW = sum_k dL/ds_T * ds_T/ds_k * ds_k/dW,

where ``ds_k/dW`` is the *immediate* derivative (step ``k`` only). :func:`manual_bptt`
computes exactly this, for any cell with the hand-backward capability (docs/cells.md):

1. The forward scan keeps each step's residuals (``cell.step_fwd``).
2. A reverse ``lax.scan`` carries ``dL/ds_t`` from the last step to the first: at step
   ``t`` it adds ``dL/dy_t`` and pushes the sum through the step's hand-derived local
   Jacobian (``cell.step_bwd``), giving ``dL/ds_{t-1}`` and the step's cotangents ``d_t``.
   That product of local Jacobians is the ``ds_T/ds_k`` chain.
3. The sum over ``k`` of ``ds_k/dW`` is then one contraction over all steps and examples
   at once (``cell.step_bwd_params``: ``dL/dW = sum_t s_{t-1}^T da_t``), and the input
   side is the transpose of the carry-independent ``cell.project`` over all steps.

The tests check the result against ``jax.vjp(recurrax.scan)`` to 1e-10 in float64.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from recurrax._core import _noise
from recurrax._core._base import Array, HandBackward, Params
from recurrax._core._validate import (
    check_bool,
    check_inputs,
    check_resets_and_key,
    compile_eager_calls,
    first_steps,
    mask_padding,
    normalize_length,
    pad_steps,
    project,
    require,
    restart,
    segment_starts,
    where_valid,
    zero_invalid,
)


def check_manual(cell) -> None:
    """Raise ``NotImplementedError`` now (at trace time) if ``cell`` has no hand backward."""
    if not isinstance(cell, HandBackward):
        for name in HandBackward.__capability_methods__:
            require(cell, name, "the hand-derived backward pass (manual_bptt, backward='manual'; "
                                "jax.grad with backward='autodiff' needs nothing)")


def forward_pass(cell, params, xs, carry, valid, reverse, unroll=1, in_loop=False, starts=None, noise=None):
    """``scan``'s forward pass keeping every step's residuals: ``(final, ys, res)``.

    ``xs`` and ``valid`` come from ``mask_padding`` (padding zeroed); ``in_loop`` projects
    each step's input inside the loop (``scan``'s ``projection="in_loop"``); ``starts``
    (``segment_starts``) restarts packed segments; ``noise`` is ``_noise.draw``'s.
    """
    whole = _noise.bind(cell, noise)  # project() sees the sequence's noise only
    xps = xs if in_loop else project(whole, params, xs)
    initial = carry

    def body(c, inputs):
        xp, v, s, n = inputs
        if in_loop:
            xp = project(whole, params, xp)
        (new, y), res = _noise.bind(cell, noise, n).step_fwd(params, restart(s, initial, c), xp)
        if v is not None:
            new, y = where_valid(v, new, c), zero_invalid(v, y)
        return new, (y, res)

    final, (ys, res) = lax.scan(body, carry, (xps, valid, starts, _noise.step_noise(noise)), reverse=reverse,
                                unroll=unroll)
    return final, ys, res


def backward_pass(cell, params, xs, res, valid, carry_bar, ys_bar, reverse, unroll=1, starts=None, noise=None):
    """The reverse scan and the sums over steps: ``(params_bar, xs_bar, carry_bar0, entering)``.

    ``entering[t]`` is ``dL/ds_{t-1}``, the cotangent of the carry entering step ``t`` that
    step ``t``'s ``step_bwd`` hands back (zero at padding steps): where gradcheck localises
    a wrong backward.
    """

    def body(state, inputs):
        cb, initial_bar = state
        r, yb, v, s, n = inputs
        prev, d = _noise.bind(cell, noise, n).step_bwd(params, r, cb, yb)
        # A cotangent has its primal's dtype (as in jax.vjp): a step computing in float32 from a
        # bfloat16 carry (float32 params, or a cell's compute dtype) gives float32 cotangents,
        # which lax.scan's loop would refuse.
        prev = cast_like(prev, cb)
        if v is not None:  # a padding step passed the carry through and output zero
            prev, d = where_valid(v, prev, cb), zero_invalid(v, d)
        entering = prev if v is None else zero_invalid(v, prev)
        if s is not None:  # a segment started here from the initial carry, not from the step before
            initial_bar = jax.tree.map(jnp.add, initial_bar, zero_invalid(s, prev))
            prev = zero_invalid(~s, prev)
        return (prev, initial_bar), (d, entering)

    initial_bar = None if starts is None else jax.tree.map(jnp.zeros_like, carry_bar)
    (carry_bar0, initial_bar), (d, entering) = lax.scan(
        body, (carry_bar, initial_bar), (res, ys_bar, valid, starts, _noise.step_noise(noise)),
        reverse=not reverse, unroll=unroll)
    if initial_bar is not None:
        carry_bar0 = jax.tree.map(jnp.add, carry_bar0, initial_bar)
    whole = _noise.bind(cell, noise)
    step_bar, xp_bar = whole.step_bwd_params(params, res, d)
    xps, project_vjp = jax.vjp(lambda p, x: project(whole, p, x), params, xs)
    project_bar, xs_bar = project_vjp(cast_like(xp_bar, xps))
    return jax.tree.map(jnp.add, cast_like(step_bar, params), project_bar), xs_bar, carry_bar0, entering


def cast_like(tree: Any, like: Any) -> Any:
    """``tree`` with the dtypes of ``like`` (same structure; ``None`` leaves stay)."""
    return jax.tree.map(lambda a, b: a.astype(jnp.result_type(b)), tree, like)


def manual_bptt(
    cell: Any,
    params: Params,
    xs: Array,
    ys_bar: Array,
    *,
    carry: Any = None,
    length: Any = None,
    carry_bar: Any = None,
    reverse: bool = False,
    resets: Any = None,
    key: Any = None,
) -> tuple[Params, Array, Any]:
    """The hand-derived backward pass of :func:`recurrax.scan`.

    Runs the forward pass keeping each step's residuals, then a reverse scan carrying
    ``dL/ds_t`` (and ``dL/dc_t`` for the LSTM), then forms the parameter gradients as the
    sum over steps in one contraction (module docstring, docs/bptt.md).

    Args:
      cell: a cell with the hand-backward capability: ``step_fwd``, ``step_bwd`` and
        ``step_bwd_params`` (docs/cells.md). Every built-in cell with tanh / sigmoid /
        relu activations has it (with a compute ``dtype`` too), and so do ``stack``s of such
        cells. The cotangents have their primals' dtypes, as with ``jax.vjp``: half-precision
        ``xs`` with float32 params work as with autodiff.
      params: its parameters.
      xs: ``[T, input_size]`` or a time-major batch ``[T, *batch, input_size]``.
      ys_bar: ``[T, *batch, output_size]``, the cotangent ``dL/dy_t`` of ``scan``'s outputs,
        in their dtype.
      carry: the initial carry (``None``: zeros).
      length: valid steps, as in :func:`recurrax.scan`.
      carry_bar: the cotangent of ``scan``'s final carry, with its structure, shapes and
        dtypes (``None``: zeros).
      reverse: as in :func:`recurrax.scan`.
      resets: packed sequences, as in :func:`recurrax.scan`.
      key: the key of the forward pass, for a stochastic cell (the same noise is drawn).

    Returns:
      ``(params_bar, xs_bar, carry_bar0)``, equal to what
      ``jax.vjp(lambda p, x, c: recurrax.scan(cell, p, x, c, length=length,
      reverse=reverse, resets=resets, key=key), params, xs, carry)`` gives for
      ``(carry_bar, ys_bar)``.

    Raises:
      NotImplementedError: for a cell without the capability (naming the missing method)
        or one that declines (e.g. an activation with no hand-derived derivative).
      ValueError, TypeError: ``ys_bar`` or ``carry_bar`` of another shape or dtype than
        ``jax.vjp`` of ``scan`` would take.

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> cell = recurrax.GRU(4)
      >>> params = cell.init(jax.random.key(0), 3)
      >>> xs = jnp.ones((6, 3))
      >>> ys_bar = jnp.ones((6, 4))
      >>> p_bar, xs_bar, h0_bar = recurrax.manual_bptt(cell, params, xs, ys_bar, length=4)
      >>> _, vjp = jax.vjp(lambda p, x: recurrax.scan(cell, p, x, length=4), params, xs)
      >>> auto_p, auto_x = vjp((jnp.zeros(4), ys_bar))
      >>> bool(jnp.allclose(p_bar.W, auto_p.W, atol=1e-6)), bool((xs_bar[4:] == 0).all())
      (True, True)
    """
    return manual_bptt_steps(cell, params, xs, ys_bar, carry=carry, length=length, carry_bar=carry_bar,
                             reverse=reverse, resets=resets, key=key, per_step=False)


def manual_bptt_steps(cell, params, xs, ys_bar, *, carry=None, length=None, carry_bar=None, reverse=False,
                      resets=None, key=None, per_step=True):
    """:func:`manual_bptt`, and with ``per_step`` also the cotangents of the carry entering each
    step ``[T, ...]`` (:func:`backward_pass`'s ``entering``)."""
    xs, carry = check_inputs(cell, xs, carry)
    check_manual(cell)
    reverse = check_bool("reverse", reverse)
    resets, key = check_resets_and_key(cell, resets, key, xs)
    final, ys = jax.eval_shape(lambda: forward_pass(cell, params, xs, carry, None, reverse)[:2])
    ys_bar = check_cotangent("ys_bar", jnp.asarray(ys_bar), ys, "scan's ys")
    if carry_bar is None:
        carry_bar = jax.tree.map(lambda f: jnp.zeros(f.shape, f.dtype), final)
    carry_bar = check_cotangent("carry_bar", carry_bar, final, "scan's final carry")
    eager = compile_eager_calls((cell, reverse), params, xs, carry, ys_bar, carry_bar, resets, key)
    steps, length = normalize_length(length, xs.shape[0], xs.shape[1:-1], static=not eager)
    run = _manual_bptt_jit if eager else _manual_bptt
    params_bar, xs_bar, carry_bar0, entering = run(cell, reverse, steps, params, xs, carry, length, ys_bar,
                                                   carry_bar, resets, key)
    return (params_bar, xs_bar, carry_bar0) + ((entering,) if per_step else ())


def check_cotangent(name: str, value: Any, like: Any, what: str) -> Any:
    """``value`` with exactly the structure, shapes and dtypes of ``like``, else an error.

    ``jax.vjp`` requires this of a cotangent; broadcasting or promoting it would be a guess.
    """
    spec = lambda tree: jax.tree.map(lambda a: f"{jnp.result_type(a)}{list(jnp.shape(a))}", tree)  # noqa: E731
    pairs = list(zip(jax.tree.leaves(value), jax.tree.leaves(like)))
    if jax.tree.structure(value) != jax.tree.structure(like) or any(jnp.shape(v) != w.shape for v, w in pairs):
        raise ValueError(f"{name} must have the shape of {what}, {spec(like)}; got {spec(value)}.")
    if any(jnp.result_type(v) != w.dtype for v, w in pairs):
        raise TypeError(f"{name} must have the dtype of {what}, {spec(like)}; got {spec(value)}. Cast it "
                        f"with .astype(), as jax.vjp would require.")
    return jax.tree.map(jnp.asarray, value)


def _manual_bptt(cell, reverse, steps, params, xs, carry, length, ys_bar, carry_bar, resets, key):
    T = xs.shape[0]
    noise = _noise.first_steps(_noise.draw(cell, params, xs, key), steps)  # as scan draws it
    xs, ys_bar, resets = first_steps(steps, xs, ys_bar, resets)
    xs, valid = mask_padding(xs, length)
    starts = segment_starts(resets, valid, reverse)
    _, _, res = forward_pass(cell, params, xs, carry, valid, reverse, starts=starts, noise=noise)
    params_bar, xs_bar, carry_bar0, entering = backward_pass(cell, params, xs, res, valid, carry_bar, ys_bar,
                                                             reverse, starts=starts, noise=noise)
    return params_bar, pad_steps(xs_bar, T), carry_bar0, pad_steps(entering, T)


# For eager calls: compiled once per (equal) cell instead of dispatched op by op.
_manual_bptt_jit = jax.jit(_manual_bptt, static_argnums=(0, 1, 2))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def scan_with_manual_vjp(cell, reverse, unroll, in_loop, params, xs, carry, valid, starts, noise):
    """``scan``'s forward pass whose gradient is :func:`backward_pass` (a ``custom_vjp``)."""
    final, ys, _ = forward_pass(cell, params, xs, carry, valid, reverse, unroll, in_loop, starts, noise)
    return final, ys


def _manual_fwd(cell, reverse, unroll, in_loop, params, xs, carry, valid, starts, noise):
    final, ys, res = forward_pass(cell, params, xs, carry, valid, reverse, unroll, in_loop, starts, noise)
    return (final, ys), (params, xs, res, valid, starts, noise)


def _manual_bwd(cell, reverse, unroll, in_loop, saved, cotangents):
    params, xs, res, valid, starts, noise = saved
    carry_bar, ys_bar = cotangents
    p_bar, xs_bar, carry_bar0, _ = backward_pass(cell, params, xs, res, valid, carry_bar, ys_bar, reverse, unroll,
                                                 starts, noise)
    # the masks and the noise are constants: no cotangent
    return p_bar, xs_bar, carry_bar0, None, None, None


scan_with_manual_vjp.defvjp(_manual_fwd, _manual_bwd)
