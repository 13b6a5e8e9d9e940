"""Running a cell over a sequence, or a time-major batch of them, with padding and direction."""

from __future__ import annotations

from typing import Any

import jax
from jax import lax

from recurrax._core import _bptt, _noise
from recurrax._core._base import Array, Carry, Params
from recurrax._core._validate import (
    check_bool,
    check_inputs,
    check_resets_and_key,
    compile_eager_calls,
    first_steps,
    mask_padding,
    normalize_length,
    pad_steps,
    preferred_projection,
    restart,
    segment_starts,
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
    resets: Any = None,
    key: Any = None,
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

    Packed sequences (``resets``): where ``resets[t]`` is True a new sequence starts at
    step ``t``, so the carry entering step ``t`` is the initial carry again. Each segment
    then gives exactly what it gives run alone (values, carries, gradients); with
    ``reverse=True`` each segment runs backwards from its own last step. ``final_carry`` is
    the carry after the last step run: the last segment's (``reverse``: the first
    segment's, after step 0). Flags on padding are ignored (docs/packed.md).

    Randomness (``key``): a :class:`recurrax.Stochastic` cell (``recurrax.Dropout``,
    ``recurrax.Zoneout``, a user's cell) draws its noise from ``key``, one example with
    ``key`` itself, the batch form the example of flattened batch index ``i`` with
    ``jax.random.fold_in(key, i)``, so the batch form equals ``jax.vmap`` over examples with
    those keys. ``key=None`` is evaluation mode (deterministic). A cell without noise
    ignores the key, as a model without dropout ignores a training flag.

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
      resets: ``None`` or bool ``[T, *batch]``: True where a new sequence starts (packed
        sequences); the carry entering that step is ``carry`` (or the zeros) again.
      key: ``None`` (evaluation mode) or a PRNG key, for the noise of a stochastic cell.

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

      Two sequences packed in one row, the second starting at step 2:

      >>> resets = jnp.array([False, False, True, False, False])
      >>> _, packed = recurrax.scan(cell, params, jnp.ones((5, 3)), resets=resets)
      >>> _, alone = recurrax.scan(cell, params, jnp.ones((3, 3)))
      >>> bool(jnp.allclose(packed[2:], alone))
      True
    """
    xs, carry = check_inputs(cell, xs, carry)
    reverse = check_bool("reverse", reverse)
    resets, key = check_resets_and_key(cell, resets, key, xs)
    backward, checkpoint, in_loop = check_options(cell, xs, unroll, backward, checkpoint, projection)
    if backward == "manual":
        _bptt.check_manual(cell)
    static = (cell, reverse, unroll, backward, checkpoint, in_loop)
    eager = compile_eager_calls(static, params, xs, carry, length, resets, key)
    steps, length = normalize_length(length, xs.shape[0], xs.shape[1:-1], static=not eager)
    return (_scan_jit if eager else _scan)(*static, steps, params, xs, carry, length, resets, key)


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


def _scan(cell, reverse, unroll, backward, checkpoint, in_loop, steps, params, xs, carry, length, resets, key):
    T = xs.shape[0]
    # drawn for all T steps before a static length shortens the loop, so that the noise of an
    # example never depends on how its length was given
    noise = _noise.first_steps(_noise.draw(cell, params, xs, key), steps)
    xs, resets = first_steps(steps, xs, resets)
    xs, valid = mask_padding(xs, length)
    starts = segment_starts(resets, valid, reverse)
    if backward == "manual":
        final, ys = _bptt.scan_with_manual_vjp(cell, reverse, unroll, in_loop, params, xs, carry, valid, starts,
                                               noise)
        return final, pad_steps(ys, T)
    if in_loop:  # the one-step form, which may fuse the input and recurrent work
        body = lambda c, x, n: _noise.bind(cell, noise, n).apply(params, c, x)  # noqa: E731
    else:
        xs = split_form(_noise.bind(cell, noise))[0](params, xs)
        body = lambda c, xp, n: split_form(_noise.bind(cell, noise, n))[1](params, c, xp)  # noqa: E731
    final, ys = masked_scan(body, carry, xs, valid, starts, _noise.step_noise(noise), reverse, unroll, checkpoint)
    return final, pad_steps(ys, T)


# For eager calls: compiled once per (equal) cell and options instead of re-traced.
_scan_jit = jax.jit(_scan, static_argnums=(0, 1, 2, 3, 4, 5, 6))


def masked_scan(step, carry, xs, valid, starts=None, noise=None, reverse=False, unroll=1, checkpoint=None):
    """``lax.scan`` of ``step(carry, x, noise_t) -> (carry, y)`` that freezes the carry and zeroes
    ``y`` where ``valid`` ``[T, *batch]`` is False (``valid=None``: every step is valid) and
    restarts from the initial carry where ``starts`` (:func:`segment_starts`) is True."""
    initial = carry

    def body(carry, inputs):
        x, v, s, n = inputs
        new, y = step(restart(s, initial, carry), x, n)
        if v is None:
            return new, y
        return where_valid(v, new, carry), zero_invalid(v, y)

    if _CHECKPOINT_POLICIES.get(checkpoint) is not None:
        body = jax.checkpoint(body, policy=_CHECKPOINT_POLICIES[checkpoint], prevent_cse=False)
    # In reverse the padding steps come first; they leave the carry untouched, so the
    # valid prefix starts from the initial carry at t = length - 1, as required.
    return lax.scan(body, carry, (xs, valid, starts, noise), reverse=reverse, unroll=unroll)
