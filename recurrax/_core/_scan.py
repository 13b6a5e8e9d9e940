"""Running a cell over a sequence, or a time-major batch of them, with padding and direction."""

from __future__ import annotations

from typing import Any

import jax
from jax import lax

from recurrax._core import _bptt
from recurrax._core._base import Array, Carry, Params
from recurrax._core._validate import (
    check_bool,
    check_inputs,
    compile_eager_calls,
    mask_padding,
    normalize_length,
    pad_steps,
    preferred_projection,
    split_form,
    where_valid,
    zero_invalid,
)

_CHECKPOINT_POLICIES = {
    "dots": jax.checkpoint_policies.dots_saveable,
    "carry": jax.checkpoint_policies.nothing_saveable,
    "all": None,  # no jax.checkpoint: the backward pass reads every intermediate
}
PROJECTIONS = ("before", "in_loop")


def scan(
    cell: Any,
    params: Params,
    xs: Array,
    carry: Carry | None = None,
    *,
    length: Any = None,
    reverse: bool = False,
    unroll: int | bool = 1,
    backward: str = "autodiff",
    checkpoint: str | None = None,
    projection: str | None = None,
) -> tuple[Carry, Array]:
    """Run ``cell`` over ``xs`` with ``jax.lax.scan``: one example, or a time-major batch.

    Semantically (``length`` defaults to ``T``; for a batch, per example)::

        def scan(cell, params, xs, carry, length, reverse):
            ys = zeros
            steps = range(length)
            for t in (reversed(steps) if reverse else steps):
                carry, ys[t] = cell.apply(params, carry, xs[t])
            return carry, ys

    Steps ``t >= length`` are padding: their outputs are zero, the carry passes through
    them unchanged, and ``final_carry`` is the carry after the last valid step (the
    initial carry when ``length == 0``). With ``reverse=True`` the valid prefix runs from
    ``length - 1`` down to ``0`` and ``ys[t]`` stays aligned with ``xs[t]``. Whatever the
    padding holds (even NaN) reaches neither the values nor the gradients.

    The batch form ``xs`` ``[T, *batch, input_size]`` gives exactly what ``jax.vmap`` of the
    one-example form over the batch gives (values, carries, gradients); it is the fast
    path: the cell sees the whole batch in each step, the input projection of all steps
    and examples is one matrix product, and ``backward="manual"`` sums the weight
    gradients over time and batch in one contraction.

    A cell's optional methods (docs/cells.md) are used whoever wrote the cell: with the
    split form (``project`` and ``step``) the carry-independent input work ``project(params,
    xs)`` runs for all steps before the loop (``projection="before"``) or step by step
    inside it (``"in_loop"``); both give the same values and derivatives, at different
    speeds (BENCHMARKS.md, "projection placement").

    Args:
      cell: any object with the cell methods ``init``, ``initial_carry``, ``apply``.
      params: its parameters.
      xs: ``[T, input_size]`` (one example) or ``[T, *batch, input_size]`` (a time-major
        batch), floating point.
      carry: the initial carry, with the batch dimensions; ``None`` means
        ``cell.initial_carry(batch, xs.dtype)``.
      length: the number of valid steps: ``None`` (all ``T``), an int, or an integer array
        (a scalar or ``[*batch]``, may be traced), ``0 <= length <= T``. A concrete value
        outside that range raises; a traced one is clipped to it. Inside a ``jit``, ``vmap``
        or ``grad``, a Python int is static: only its steps run and ``ys`` is padded with
        zeros, with no mask at all.
      reverse: run from the last valid step to the first.
      unroll: passed to ``jax.lax.scan``.
      backward: how ``jax.grad`` differentiates it: ``"autodiff"`` (JAX's transpose of the
        loop) or ``"manual"`` (a ``custom_vjp`` running :func:`recurrax.manual_bptt`'s
        hand-derived reverse scan, for cells with ``step_fwd``/``step_bwd``/
        ``step_bwd_params``). Both give the same gradients; BENCHMARKS.md says which is
        faster where.
      checkpoint: what the forward pass keeps for ``backward="autodiff"`` (``jax.checkpoint``
        of the step): ``"dots"`` keeps the matrix products and recomputes the gates'
        elementwise work in the backward pass; ``"carry"`` keeps only the carries and the
        inputs and projects each step's input inside the loop, so that memory is about
        that of the carries alone, for long sequences, at the price of redoing each step;
        ``"all"`` keeps every intermediate (JAX's default, no ``jax.checkpoint``).
        ``None`` (default) means ``"dots"``. BENCHMARKS.md has the measured time and
        memory of each. ``backward="manual"`` keeps its own residuals: any policy with it
        is refused.
      projection: where a split-form cell's input work runs: ``"before"`` the loop
        (``project`` for all steps in one call, then ``step`` in the loop), or ``"in_loop"``
        (the one-step ``apply`` in the loop, which the built-in RNN, LSTM and reset-before
        GRU compute with one matrix product ``[x, h] @ [U; W]``). ``None`` asks the cell's
        ``preferred_projection`` (a string, or a method of the batch shape; docs/cells.md),
        else ``"before"``. The built-in cells prefer what BENCHMARKS.md measured faster on
        CPU: ``"in_loop"`` from 8 examples on (LSTM), from 4 (RNN, reset-before GRU),
        always (reset-after GRU), ``"before"`` below that and for the min cells. Under
        ``jax.vmap`` the cell sees one example (batch ``()``). ``checkpoint="carry"``
        always runs in the loop (``projection="before"`` with it is refused).

    Returns:
      ``(final_carry, ys)`` with ``ys`` ``[T, *batch, output_size]``, zero past ``length``.

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> cell = recurrax.GRU(8)
      >>> params = cell.init(jax.random.key(0), 3)
      >>> h, ys = recurrax.scan(cell, params, jnp.ones((5, 3)), length=3)
      >>> ys.shape, bool((ys[3:] == 0).all()), bool((h == ys[2]).all())
      ((5, 8), True, True)

      A time-major batch of padded sequences (the same as ``jax.vmap`` over examples):

      >>> h, ys = recurrax.scan(cell, params, jnp.ones((5, 2, 3)), length=jnp.array([5, 2]))
      >>> ys.shape, h.shape
      ((5, 2, 8), (2, 8))
    """
    xs, carry = check_inputs(cell, xs, carry)
    reverse = check_bool("reverse", reverse)
    backward, checkpoint, in_loop = check_options(cell, xs, unroll, backward, checkpoint, projection)
    if backward == "manual":
        _bptt.check_manual(cell)
    static = (cell, reverse, unroll, backward, checkpoint, in_loop)
    eager = compile_eager_calls(static, params, xs, carry, length)
    steps, length = normalize_length(length, xs.shape[0], xs.shape[1:-1], static=not eager)
    T, xs = xs.shape[0], xs if steps is None else xs[:steps]
    final, ys = (_scan_jit if eager else _scan)(*static, params, xs, carry, length)
    return final, pad_steps(ys, T)


def check_options(cell, xs, unroll, backward, checkpoint, projection) -> tuple:
    """``(backward, checkpoint, in_loop)`` from ``scan``'s options; combinations in which an
    option would do nothing are refused rather than ignored."""
    if not (isinstance(unroll, bool) or (isinstance(unroll, int) and unroll >= 1)):
        raise ValueError(f"unroll must be a positive int or a bool; got {unroll!r}.")
    if backward not in ("autodiff", "manual"):
        raise ValueError(f'backward must be "autodiff" or "manual"; got {backward!r}.')
    if checkpoint is not None and checkpoint not in _CHECKPOINT_POLICIES:
        raise ValueError(f'checkpoint must be "dots", "carry", "all" or None; got {checkpoint!r}.')
    if backward == "manual" and checkpoint is not None:
        raise ValueError(
            f'checkpoint={checkpoint!r} does nothing with backward="manual", whose backward pass keeps '
            f"the residuals it derived by hand; drop checkpoint, or use backward=\"autodiff\".")
    if projection is not None and projection not in PROJECTIONS:
        raise ValueError(f'projection must be "before", "in_loop" or None; got {projection!r}.')
    if checkpoint == "carry" and projection == "before":
        raise ValueError('checkpoint="carry" projects each step inside the loop (it keeps no [T, ...] '
                         'projection); projection="before" contradicts it. Drop one of the two.')
    if projection is None:
        projection = preferred_projection(cell, xs.shape[1:-1])
        if projection not in PROJECTIONS:
            raise ValueError(f"{cell!r}.preferred_projection gave {projection!r}; expected one of {PROJECTIONS}.")
    if backward == "autodiff" and checkpoint is None:
        checkpoint = "dots"
    return backward, checkpoint, projection == "in_loop" or checkpoint == "carry"


def _scan(cell, reverse, unroll, backward, checkpoint, in_loop, params, xs, carry, length):
    xs, valid = mask_padding(xs, length)
    if backward == "manual":
        return _bptt.scan_with_manual_vjp(cell, reverse, unroll, in_loop, params, xs, carry, valid)
    if in_loop:  # the one-step form, which may fuse the input and recurrent work
        body = lambda c, x: cell.apply(params, c, x)  # noqa: E731
    else:
        project, step = split_form(cell)
        xs = project(params, xs)
        body = lambda c, xp: step(params, c, xp)  # noqa: E731
    return masked_scan(body, carry, xs, valid, reverse, unroll, checkpoint)


# For eager calls: compiled once per (equal) cell and options instead of re-traced.
_scan_jit = jax.jit(_scan, static_argnums=(0, 1, 2, 3, 4, 5))


def masked_scan(step, carry, xs, valid, reverse=False, unroll=1, checkpoint=None):
    """``lax.scan`` of ``step(carry, x) -> (carry, y)`` that freezes the carry and zeroes ``y``
    where ``valid`` ``[T, *batch]`` is False (``valid=None``: every step is valid)."""

    def body(carry, inputs):
        x, v = inputs
        new, y = step(carry, x)
        if v is None:
            return new, y
        return where_valid(v, new, carry), zero_invalid(v, y)

    if _CHECKPOINT_POLICIES.get(checkpoint) is not None:
        body = jax.checkpoint(body, policy=_CHECKPOINT_POLICIES[checkpoint], prevent_cse=False)
    # In reverse the padding steps come first; they leave the carry untouched, so the
    # valid prefix starts from the initial carry at t = length - 1, as required.
    return lax.scan(body, carry, (xs, valid), reverse=reverse, unroll=unroll)

