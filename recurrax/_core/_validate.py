"""Input checks shared by the whole core; this module imports only ``_base`` from recurrax.

Every check raises at trace time with the argument's name, what was expected, what
arrived and the fix. Nothing here asserts: user input never meets an ``assert``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from recurrax._core._base import Declined, SplitForm, Stochastic

CELL_METHODS = ("init", "initial_carry", "apply")


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}.")
    return int(value)


def check_bool(name: str, value: Any) -> bool:
    # A truthy string would silently pick a direction; an array cannot be a static argument.
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool (True or False); got {type(value).__name__} {value!r}.")
    return bool(value)


def check_cell(cell: Any, name: str = "cell") -> Any:
    """Accept anything with the three cell methods (a structural protocol, no ``isinstance``)."""
    missing = [m for m in CELL_METHODS if not callable(getattr(cell, m, None))]
    if missing:
        raise TypeError(
            f"{name} must be a cell: an object with init, initial_carry and apply methods (for "
            f"example recurrax.LSTM(8), or recurrax.Cell(init, initial_carry, apply)); got a "
            f"{type(cell).__name__} without {', '.join(missing)}."
        )
    return cell


def split_form(cell: Any):
    """``(project, step)``: the cell's split form, or ``(identity, apply)`` without one.

    The one place that decides how a cell's input work and recurrence are separated
    (docs/cells.md).
    """
    if isinstance(cell, SplitForm):
        return cell.project, cell.step
    return _identity, cell.apply


def _identity(params: Any, x: Any) -> Any:
    return x


def project(cell: Any, params: Any, xs: Any) -> Any:
    """``cell``'s carry-independent input work on ``xs`` (``xs`` itself without a split form)."""
    return split_form(cell)[0](params, xs)


def preferred_projection(cell: Any, batch_shape: tuple) -> str:
    """The cell's default projection placement for this batch: its ``preferred_projection``
    (a string, or a method of the batch shape), else ``"before"`` (docs/cells.md)."""
    preferred = getattr(cell, "preferred_projection", "before")
    return preferred(tuple(batch_shape)) if callable(preferred) else preferred


def require(cell: Any, name: str, needed_by: str):
    """The cell's method ``name``; a clear ``NotImplementedError`` when it has none."""
    try:
        return getattr(cell, name)
    except Declined as e:
        reason = str(e)
    except AttributeError:
        reason = f"{cell!r} does not have it"
    raise NotImplementedError(f"{needed_by} needs the cell's {name}() method; {reason} (docs/cells.md says what "
                              f"it computes).")


def check_xs(xs: Any) -> jax.Array:
    """``xs`` ``[T, *batch, input_size]``, floating point, as an array."""
    if not hasattr(xs, "shape"):
        xs = jnp.asarray(xs)
    if xs.ndim < 2:
        hint = " For one feature per step use xs[:, None]." if xs.ndim == 1 else ""
        raise ValueError(
            f"xs must be [T, input_size] (one example) or [T, *batch, input_size] (a time-major "
            f"batch); got shape {tuple(xs.shape)}.{hint}"
        )
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        raise TypeError(
            f"xs must be floating point; got {xs.dtype}. Turn token ids into vectors first "
            f"with recurrax.one_hot or recurrax.Embedding."
        )
    return xs


def normalize_length(length: Any, T: int, batch: tuple, *, static: bool) -> tuple:
    """``length`` (``None``, a scalar, or ``[*batch]``; ints in ``[0, T]``) checked and put in
    the one form every consumer runs: ``(steps, length)``.

    ``steps`` is how many leading steps to run (``None``: all ``T``) and ``length`` the
    ``[*batch]`` int32 array of valid steps per example (``None``: no padding). An array
    scalar is broadcast to every example, so a mask is never shared by a batch.

    ``static=True`` (a caller inside a user's trace that may shorten the loop): a Python or
    NumPy int runs only its steps with no mask at all, ``(n, None)``; the caller pads with
    :func:`pad_steps`. That is exact, runs fewer steps, and never builds a mask shared by a
    vmapped batch, which XLA:CPU has miscompiled (docs/design.md, "Known upstream bug").
    ``static=False`` (an eager call, so one compiled loop serves every length, or a
    consumer that runs every step): an int becomes a ``[*batch]`` array.
    """
    if length is None:
        return None, None
    if isinstance(length, (list, tuple)):
        length = np.asarray(length)
    is_int = isinstance(length, (int, np.integer)) and not isinstance(length, bool)
    dtype = jnp.int32 if is_int else getattr(length, "dtype", None)
    if isinstance(length, bool) or dtype is None or not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(
            f"length must be integers (the number of valid steps); got "
            f"{type(length).__name__}{'' if dtype is None else f' of dtype {dtype}'}. Pass an int "
            f"or an integer array, e.g. jnp.asarray(n, jnp.int32)."
        )
    shape = tuple(np.shape(length))
    if shape not in ((), tuple(batch)):
        raise ValueError(
            f"length must be a scalar or have the batch shape {tuple(batch)} of xs "
            f"[T, *batch, input_size]; got shape {shape}."
        )
    if not isinstance(length, jax.core.Tracer):
        values = np.asarray(length)
        if values.size and (values.min() < 0 or values.max() > T):
            raise ValueError(f"length must be in [0, T] = [0, {T}]; got values in [{values.min()}, {values.max()}].")
    if is_int:
        if int(length) == T:
            return None, None
        return (int(length), None) if static else (None, jnp.full(tuple(batch), int(length), jnp.int32))
    # A traced length outside [0, T] cannot raise; it is clipped (documented in scan), in
    # its own dtype: casting first would wrap an int64 or uint32 length into range.
    return None, jnp.broadcast_to(jnp.clip(length, 0, T).astype(jnp.int32), tuple(batch))


def per_example_length(length: Any, T: int, batch: tuple) -> jax.Array:
    """``length`` as ``[*batch]`` int32 for a consumer that runs every step (``parallel_scan``, cuDNN)."""
    _, length = normalize_length(length, T, batch, static=False)
    return jnp.full(tuple(batch), T, jnp.int32) if length is None else length


def pad_steps(tree: Any, T: int) -> Any:
    """``tree``'s leaves ``[n, ...]`` (the valid steps) extended with zero steps to ``[T, ...]``."""

    def pad(a):
        return a if a.shape[0] == T else jnp.pad(a, [(0, T - a.shape[0])] + [(0, 0)] * (a.ndim - 1))

    return jax.tree.map(pad, tree)


def first_steps(steps: int | None, *arrays: Any) -> tuple:
    """Each array (``None`` stays ``None``) cut to its first ``steps`` steps (``None``: all)."""
    return tuple(a if steps is None or a is None else a[:steps] for a in arrays)


def check_entries(name: str, value: Any, n: int, owner: str, per: str) -> tuple:
    """``value`` as a tuple of ``n`` entries, one per layer (or direction) of ``owner``.

    ``zip`` would silently drop the layers without an entry (or the extra entries) and
    unpacking would silently split an array, so anything but a tuple or list of ``n`` raises.
    """
    if not isinstance(value, (tuple, list)) or len(value) != n:
        size = f" of length {len(value)}" if isinstance(value, (tuple, list)) else ""
        raise ValueError(
            f"{owner} takes {name} as a tuple of {n}, one per {per}; got {type(value).__name__}{size}."
        )
    return tuple(value)


def check_carry(cell: Any, carry: Any, batch: tuple, dtype: Any) -> Any:
    """A user-supplied initial carry against ``cell.initial_carry(batch, dtype)``."""
    expected = jax.eval_shape(lambda: cell.initial_carry(tuple(batch), dtype))
    want, got = jax.tree.structure(expected), jax.tree.structure(carry)
    if want != got:
        raise ValueError(f"carry must have the structure of cell.initial_carry(): {want}; got {got}.")
    for e, c in zip(jax.tree.leaves(expected), jax.tree.leaves(carry)):
        if jnp.shape(c) != e.shape:
            raise ValueError(
                f"carry leaves must be {e.shape} ([*batch, ...] with batch {tuple(batch)} from xs "
                f"[T, *batch, input_size]), as cell.initial_carry({tuple(batch)}) gives; got a "
                f"leaf of shape {jnp.shape(c)}."
            )
        if not jnp.issubdtype(jnp.result_type(c), jnp.floating):
            raise TypeError(f"carry leaves must be floating point; got {jnp.result_type(c)}.")
        if jnp.result_type(c) != e.dtype:
            # lax.scan keeps the carry's dtype: promoting it silently would change the precision
            raise TypeError(
                f"carry leaves must have the dtype cell.initial_carry({tuple(batch)}, {jnp.dtype(dtype).name}) "
                f"gives for these xs, {e.dtype}; got {jnp.result_type(c)}. Cast the carry with "
                f".astype({e.dtype.name!r}), or xs to the carry's dtype.")
    return carry


def check_inputs(cell: Any, xs: Any, carry: Any) -> tuple:
    """``(xs, carry)`` checked as :func:`scan` takes them, ``carry`` filled in with the batch
    dimensions of ``xs`` (``length`` goes through :func:`normalize_length`)."""
    check_cell(cell)
    xs = check_xs(xs)
    batch = tuple(xs.shape[1:-1])
    carry = cell.initial_carry(batch, xs.dtype) if carry is None else check_carry(cell, carry, batch, xs.dtype)
    return xs, carry


def mask_padding(xs: jax.Array, length: jax.Array | None):
    """``(xs, valid)``: the ``[T, *batch]`` mask ``t < length`` and ``xs`` zeroed where it is False.

    Zeroing once, outside the loop, means whatever the padding holds (even NaN) never
    reaches the values or the gradients of the valid steps. ``valid`` is ``None`` without
    ``length``.
    """
    if length is None:
        return xs, None
    t = jnp.arange(xs.shape[0], dtype=jnp.int32).reshape((-1,) + (1,) * length.ndim)
    valid = t < length[None]
    return jnp.where(valid[..., None], xs, jnp.zeros((), xs.dtype)), valid


def check_resets(resets: Any, xs: jax.Array) -> jax.Array | None:
    """``resets`` (``None`` or bool ``[T, *batch]``: True where a new sequence starts) as an array."""
    if resets is None:
        return None
    if not hasattr(resets, "dtype"):
        resets = np.asarray(resets)
    shape = tuple(xs.shape[:-1])
    if tuple(np.shape(resets)) != shape:
        raise ValueError(f"resets must be [T, *batch] = {list(shape)} (one flag per step and example of xs "
                         f"{list(xs.shape)}); got shape {list(np.shape(resets))}.")
    if resets.dtype != np.bool_:
        raise TypeError(f"resets must be bool (True where a new sequence starts); got {resets.dtype}. Pass "
                        f"resets != 0 or resets.astype(bool).")
    return jnp.asarray(resets)


def segment_starts(resets: jax.Array | None, valid: jax.Array | None, reverse: bool) -> jax.Array | None:
    """``[T, *batch]`` bool: where the carry entering a step, in running order, is the initial carry.

    Forwards that is ``resets`` itself; backwards a segment starts at its LAST step, the
    step before the next reset. Flags on padding (``~valid``) are dropped: padding keeps
    the carry as it is.
    """
    if resets is None:
        return None
    if reverse:
        resets = jnp.concatenate([resets[1:], jnp.zeros_like(resets[:1])])
    return resets if valid is None else resets & valid


def restart(starts: jax.Array | None, initial: Any, carry: Any) -> Any:
    """The carry entering a step: ``initial`` where a segment starts there, else ``carry``."""
    return carry if starts is None else where_valid(starts, initial, carry)


def check_key(key: Any) -> jax.Array | None:
    """``key``: ``None`` or one PRNG key (a typed key ``jax.random.key(0)`` or a raw ``uint32[2]``)."""
    if key is None:
        return None
    dtype = getattr(key, "dtype", None)
    typed = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
    raw = dtype == np.uint32 and tuple(np.shape(key)) == (2,)
    if not (typed and np.shape(key) == ()) and not raw:
        got = type(key).__name__ if dtype is None else f"{dtype}{list(np.shape(key))}"
        raise TypeError(f"key must be one PRNG key, e.g. jax.random.key(0) (under jax.vmap, one per example); "
                        f"got {got}.")
    return key


def check_resets_and_key(cell: Any, resets: Any, key: Any, xs: jax.Array) -> tuple:
    """``(resets, key)`` checked for ``xs``; ``key`` is ``None`` for a cell without noise, which
    ignores it (so it neither changes the program nor splits the compile cache)."""
    resets, key = check_resets(resets, xs), check_key(key)
    return resets, key if isinstance(cell, Stochastic) else None


def where_valid(valid: jax.Array, new: Any, old: Any) -> Any:
    """``new`` where ``valid`` (``[*batch]``) holds, else ``old``, leaf by leaf (``[*batch, ...]``)."""

    def pick(a, b):
        v = valid.reshape(valid.shape + (1,) * (jnp.ndim(a) - valid.ndim))
        return jnp.where(v, a, b)

    return jax.tree.map(pick, new, old)


def zero_invalid(valid: jax.Array, tree: Any) -> Any:
    """``tree`` with every leaf ``[*batch, ...]`` zeroed where ``valid`` is False."""
    return where_valid(valid, tree, jax.tree.map(jnp.zeros_like, tree))


def compile_eager_calls(static: tuple, *arrays: Any) -> bool:
    """Whether to run through a ``jax.jit`` of our own: only for an eager call.

    An eager call compiles once per equal static arguments instead of re-tracing. Inside a
    user's trace (``jit``, ``grad``, ``vmap``) a nested ``jit`` only adds a call boundary
    that XLA optimises less across (benchmarks/HISTORY.md, "Cell redesign"); unhashable static
    arguments cannot be cached at all.
    """
    try:
        hash(static)
    except TypeError:
        return False
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(arrays))


def coarsest_float(fn: Any, *args: Any) -> np.dtype | None:
    """The floating dtype with the largest epsilon among all values ``fn(*args)`` computes.

    Read from the traced program (nested scans, loops and custom derivatives included), so a
    cell that casts to ``bfloat16`` inside shows up even when its inputs and outputs are
    ``float32``; ``None`` if nothing is floating point. Only shapes and dtypes of ``args``
    are used.
    """
    from jax.extend.core import ClosedJaxpr, Jaxpr

    dtypes = set()

    def walk(jaxpr):
        for var in (*jaxpr.constvars, *jaxpr.invars, *(v for eqn in jaxpr.eqns for v in eqn.outvars)):
            dtypes.add(getattr(var.aval, "dtype", None))
        for eqn in jaxpr.eqns:
            for param in eqn.params.values():
                for sub in param if isinstance(param, (tuple, list)) else (param,):
                    if isinstance(sub, (ClosedJaxpr, Jaxpr)):
                        walk(sub.jaxpr if isinstance(sub, ClosedJaxpr) else sub)

    specs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), args)
    walk(jax.make_jaxpr(fn)(*specs).jaxpr)
    floats = [d for d in dtypes if d is not None and jnp.issubdtype(d, jnp.inexact)]
    return max(floats, key=lambda d: float(jnp.finfo(d).eps), default=None)
