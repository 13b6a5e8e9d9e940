"""Running a cell over one sequence, with padding and direction (DESIGN.md 1.3)."""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

from recurrax._base import Array, Carry, Cell, Params
from recurrax._cells import _Spec, _StackSpec, fast_spec, prepare_params, project, spec_of, step


def _expected_input_size(cell: Cell, params: Params) -> Optional[int]:
    spec = spec_of(cell)
    if isinstance(spec, _StackSpec) and isinstance(params, (tuple, list)) and params:
        return _expected_input_size(spec.cells[0], params[0])
    if isinstance(spec, _Spec) and hasattr(params, "U"):
        return params.U.shape[0]
    return None


def check_xs(cell: Cell, params: Params, xs: Any) -> Array:
    """Validate one example's ``xs`` ``[T, input_size]``; return it as an array."""
    if not hasattr(xs, "shape"):
        xs = jnp.asarray(xs)
    size = _expected_input_size(cell, params)
    want = f"[T, {size}]" if size is not None else "[T, input_size]"
    if xs.ndim == 3:
        raise ValueError(
            f"xs must be {want} (one example, time-major); got {tuple(xs.shape)}. For a batch "
            f"use jax.vmap, e.g. jax.vmap(lambda xs, n: recurrax.scan(cell, params, xs, "
            f"length=n))(xs, lengths)."
        )
    if xs.ndim != 2:
        hint = " For one feature per step use xs[:, None]." if xs.ndim == 1 else ""
        raise ValueError(f"xs must be {want} (one example, time-major); got {tuple(xs.shape)}.{hint}")
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        raise TypeError(
            f"xs must be floating point; got {xs.dtype}. Turn token ids into vectors first "
            f"with recurrax.one_hot or recurrax.embedding."
        )
    if size is not None and xs.shape[1] != size:
        raise ValueError(
            f"xs must be {want}: these params were created for input_size={size}; got xs of "
            f"shape {tuple(xs.shape)}. Pass inputs with {size} features or re-init the params "
            f"with cell.init(key, {xs.shape[1]})."
        )
    return xs


def check_length(length: Any, T: int) -> Array:
    """Validate ``length`` (a scalar int, maybe traced, ``0 <= length <= T``)."""
    dtype = getattr(length, "dtype", None)
    if isinstance(length, bool) or (dtype is None and not isinstance(length, (int, np.integer))) or (
        dtype is not None and not jnp.issubdtype(dtype, jnp.integer)
    ):
        raise TypeError(
            f"length must be an integer scalar (the number of valid steps); got "
            f"{type(length).__name__}{'' if dtype is None else f' of dtype {dtype}'}. Pass an int "
            f"or an int32 array, e.g. jnp.asarray(n, jnp.int32)."
        )
    if np.ndim(length) != 0:
        raise ValueError(
            f"length must be a scalar (one example); got shape {np.shape(length)}. For a batch "
            f"use jax.vmap over xs and length together."
        )
    if not isinstance(length, jax.core.Tracer):
        if not 0 <= int(length) <= T:
            raise ValueError(f"length must be in [0, T] = [0, {T}]; got {int(length)}.")
    # A traced length outside [0, T] cannot raise; it is clipped (documented in scan).
    return jnp.clip(jnp.asarray(length), 0, T)


def check_carry(cell: Cell, carry: Carry, dtype: Any) -> Carry:
    """Validate a user-supplied initial carry against ``cell.initial_carry()``."""
    expected = jax.eval_shape(lambda: cell.initial_carry((), dtype))
    want = jax.tree.structure(expected)
    got = jax.tree.structure(carry)
    if want != got:
        raise ValueError(
            f"carry must have the structure of cell.initial_carry(): {want}; got {got}."
        )
    for e, c in zip(jax.tree.leaves(expected), jax.tree.leaves(carry)):
        if jnp.shape(c) != e.shape:
            hint = " For a batch use jax.vmap." if jnp.ndim(c) > len(e.shape) else ""
            raise ValueError(
                f"carry must be one example's carry with leaves of shape {e.shape} (as "
                f"cell.initial_carry() gives); got a leaf of shape {jnp.shape(c)}.{hint}"
            )
    return carry


def mask_padding(xs: Array, length: Any) -> tuple[Array, Optional[Array]]:
    """``(xs, valid)``: the ``[T]`` mask ``t < length`` (``None`` without ``length``) and ``xs``
    with the padding zeroed.

    Zeroing once, outside the loop, means whatever the padding holds (even NaN) never
    reaches the values or the gradients of the valid steps.
    """
    if length is None:
        return xs, None
    valid = jnp.arange(xs.shape[0]) < check_length(length, xs.shape[0])
    return jnp.where(valid[:, None], xs, 0), valid


def project_in_loop(spec, checkpoint: Optional[str]) -> bool:
    """Whether each step projects its own input ``x_t U`` rather than all steps up front.

    Up front is one large matrix product, but it also means a ``[T, k*H]`` array (and its
    cotangent) in memory. With ``checkpoint="carry"`` that array must not exist. On XLA:CPU
    the gated cells' gradient is also faster with the projection in the loop from batch 32
    up (BENCHMARKS.md, "projection placement"); the LSTM's forward is faster up front, so
    for it ``scan`` computes values up front and derivatives in the loop
    (``values_up_front``). The vanilla RNN is faster up front. On accelerators it stays up
    front (the usual choice; ``benchmarks/gpu.sh`` measures both).
    """
    if checkpoint == "carry":
        return True
    return jax.default_backend() == "cpu" and _first(spec).num_gates > 1


def values_up_front(spec) -> bool:
    """Whether, where ``project_in_loop`` holds, values alone are still computed up front.

    Only the LSTM's forward was measured faster with the projection up front (on XLA:CPU,
    10-20% at batch 32); the GRUs' was as fast or faster in the loop (BENCHMARKS.md).
    """
    return _first(spec).name == "lstm"


def _first(spec):
    """The spec of a cell or of a stack's first layer (the one that reads ``xs``)."""
    return spec_of(spec.cells[0]) if isinstance(spec, _StackSpec) else spec


_CHECKPOINT_POLICIES = {
    "dots": jax.checkpoint_policies.dots_saveable,
    "carry": jax.checkpoint_policies.nothing_saveable,
}


def scan(
    cell: Cell,
    params: Params,
    xs: Array,
    carry: Optional[Carry] = None,
    *,
    length: Any = None,
    reverse: bool = False,
    unroll: int | bool = 1,
    backward: str = "autodiff",
    checkpoint: Optional[str] = "dots",
) -> tuple[Carry, Array]:
    """Run ``cell`` over one sequence ``xs`` with ``jax.lax.scan``.

    Semantically (``length`` defaults to ``T``)::

        def scan(cell, params, xs, carry, length, reverse):
            ys = zeros
            steps = range(length)
            for t in (reversed(steps) if reverse else steps):
                carry, ys[t] = cell.apply(params, carry, xs[t])
            return carry, ys

    Steps ``t >= length`` are padding: their outputs are zero, the carry passes through
    them unchanged, and ``final_carry`` is the carry after the last valid step (the
    initial carry when ``length == 0``). With ``reverse=True`` the valid prefix runs from
    ``length - 1`` down to ``0`` and ``ys[t]`` stays aligned with ``xs[t]``.

    Args:
      cell: a :class:`Cell`.
      params: its parameters.
      xs: ``[T, input_size]``, ONE example, time-major, floating point. For a batch use
        ``jax.vmap`` (over ``xs``, ``length`` and ``carry`` as needed).
      carry: the initial carry; ``None`` means ``cell.initial_carry((), xs.dtype)``.
      length: the number of valid steps, an int or a (possibly traced) integer scalar,
        ``0 <= length <= T``. A concrete value outside that range raises; a traced one is
        clipped to it. ``None`` means all ``T`` steps are valid.
      reverse: run from the last valid step to the first.
      unroll: passed to ``jax.lax.scan``.
      backward: how ``jax.grad`` differentiates it: ``"autodiff"`` (JAX's transpose of
        the loop) or ``"manual"`` (a ``custom_vjp`` running :func:`recurrax.manual_bptt`'s
        hand-derived reverse scan, with the weight gradients summed over all steps in one
        matrix product; built-in cells and stacks of them only). Both give the same
        gradients; BENCHMARKS.md says which is faster where.
      checkpoint: what the forward pass keeps for ``backward="autodiff"``
        (``jax.checkpoint`` of the step): ``"dots"`` (default) keeps the matrix products
        and recomputes the gates' elementwise work in the backward pass (at least as
        fast as ``None`` on this project's CPU, with about 40% less memory; BENCHMARKS.md);
        ``"carry"`` keeps only the carries (and the inputs) and projects each step's
        input inside the loop, so that memory is about that of the carries alone (within
        twice params plus carries, tested), for long sequences, at the price of redoing
        each step; ``None`` keeps every intermediate (JAX's default).

    Returns:
      ``(final_carry, ys)`` with ``ys`` ``[T, output_size]``, zero past ``length``.

    For the built-in cells the input projection ``x U`` is computed either for all steps
    before the loop or step by step inside it, whichever BENCHMARKS.md measured faster
    (on CPU: inside for the GRUs, and for the LSTM's derivatives); both give the same
    values and derivatives, forward and reverse mode (tested).

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> cell = recurrax.gru(8)
      >>> params = cell.init(jax.random.key(0), 3)
      >>> xs = jnp.ones((5, 3))
      >>> h, ys = recurrax.scan(cell, params, xs, length=3)
      >>> ys.shape, bool((ys[3:] == 0).all()), bool((h == ys[2]).all())
      ((5, 8), True, True)

      A batch of padded sequences, with ``jax.vmap``:

      >>> lengths = jnp.array([5, 2])
      >>> h, ys = jax.vmap(lambda x, n: recurrax.scan(cell, params, x, length=n))(
      ...     jnp.ones((2, 5, 3)), lengths)
      >>> ys.shape
      (2, 5, 8)
    """
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a recurrax.Cell; got {type(cell).__name__}.")
    xs = check_xs(cell, params, xs)
    if carry is None:
        carry = cell.initial_carry((), xs.dtype)
    else:
        carry = check_carry(cell, carry, xs.dtype)
    if not (isinstance(unroll, bool) or (isinstance(unroll, int) and unroll >= 1)):
        raise ValueError(f"unroll must be a positive int or a bool; got {unroll!r}.")

    xs, valid = mask_padding(xs, length)

    if checkpoint not in _CHECKPOINT_POLICIES and checkpoint is not None:
        raise ValueError(f'checkpoint must be "dots", "carry" or None; got {checkpoint!r}.')
    if backward == "manual":
        from recurrax._bptt import _check_supported, scan_with_manual_vjp

        return scan_with_manual_vjp(_check_supported(cell), params, xs, carry, valid, reverse, unroll)
    if backward != "autodiff":
        raise ValueError(f'backward must be "autodiff" or "manual"; got {backward!r}.')
    spec = fast_spec(cell)
    if spec is None:
        return _loop(lambda c, x: cell.apply(params, c, x), carry, xs, valid, reverse, unroll, checkpoint)
    # Built-in cells: the weights prepared once outside the loop (compute dtype, the LSTM's
    # halved gate columns), and the input projection x U either for all steps in one
    # matrix product before the loop or per step (project_in_loop).
    jax.eval_shape(cell.apply, params, carry, jax.ShapeDtypeStruct(xs.shape[1:], xs.dtype))  # the cell's checks
    options = (spec, reverse, unroll, checkpoint)
    args = (prepare_params(spec, params), xs, carry, valid)
    in_loop = project_in_loop(spec, checkpoint)
    if in_loop and checkpoint != "carry" and values_up_front(spec):
        return _up_front_unless_differentiated(*options, *args)
    return _builtin_loop(*options, in_loop, *args)


def _loop(apply, carry, xs, valid, reverse, unroll, checkpoint):
    """``lax.scan`` of ``apply(carry, x) -> (carry, y)`` with the padding mask."""

    def body(carry, inputs):
        x, v = inputs
        new_carry, y = apply(carry, x)
        if v is None:
            return new_carry, y
        carry = jax.tree.map(lambda new, old: jnp.where(v, new, old), new_carry, carry)
        return carry, jax.tree.map(lambda y: jnp.where(v, y, jnp.zeros_like(y)), y)

    if checkpoint is not None:
        body = jax.checkpoint(body, policy=_CHECKPOINT_POLICIES[checkpoint])
    # In reverse the padding steps come first; they leave the carry untouched, so the
    # valid prefix starts from the initial carry at t = length - 1, as required.
    return lax.scan(body, carry, (xs, valid), reverse=reverse, unroll=unroll)


def _builtin_loop(spec, reverse, unroll, checkpoint, in_loop, params_p, xs, carry, valid):
    if in_loop:
        apply = lambda c, x: step(spec, params_p, project(spec, params_p, x), c)[:2]
    else:
        xs = project(spec, params_p, xs)
        apply = lambda c, xu: step(spec, params_p, xu, c)[:2]
    return _loop(apply, carry, xs, valid, reverse, unroll, checkpoint)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2, 3))
def _up_front_unless_differentiated(spec, reverse, unroll, checkpoint, params_p, xs, carry, valid):
    """The projection up front when only values are wanted, in the loop when differentiated.

    On XLA:CPU the LSTM's forward is faster with the projection up front and its gradient
    with the projection in the loop (BENCHMARKS.md, projection placement); the two give
    the same values and derivatives, so the JVP rule (and through it ``jax.grad``) runs the
    in-loop version.
    """
    return _builtin_loop(spec, reverse, unroll, checkpoint, False, params_p, xs, carry, valid)


def _in_loop_jvp(spec, reverse, unroll, checkpoint, primals, tangents):
    # Inputs with a symbolic-zero tangent (e.g. xs under jax.grad w.r.t. params) become
    # constants of the differentiated function, so no zero tangents are computed.
    leaves, tree = jax.tree.flatten(primals)
    t_leaves = jax.tree.leaves(tangents, is_leaf=lambda t: isinstance(t, SymbolicZero))
    live = [not isinstance(t, SymbolicZero) for t in t_leaves]

    def f(*live_leaves):
        it = iter(live_leaves)
        args = jax.tree.unflatten(tree, [next(it) if l else p for p, l in zip(leaves, live)])
        return _builtin_loop(spec, reverse, unroll, checkpoint, True, *args)

    return jax.jvp(f, [p for p, l in zip(leaves, live) if l], [t for t, l in zip(t_leaves, live) if l])


_up_front_unless_differentiated.defjvp(_in_loop_jvp, symbolic_zeros=True)
