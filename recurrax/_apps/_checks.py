"""Argument checks shared by the losses, metrics and models: they raise at call time, naming the argument.

Range checks need concrete values; under ``jit``/``vmap`` the caller poisons the result
instead (NaN for losses, ``-1`` for counts and token ids), so a bad id never gives a
plausible number.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def integers(name: str, a: Any, what: str = "integer class ids", hint: str = "") -> jax.Array:
    """``a`` as an array of an integer dtype (bool is not one: ``True`` is no class id)."""
    if not hasattr(a, "dtype") and np.size(a) == 0:  # [] has no dtype, and holds no wrong one
        a = np.zeros(np.shape(a), np.int32)
    a = jnp.asarray(a)
    if not jnp.issubdtype(a.dtype, jnp.integer):
        raise TypeError(f"{name} must be {what}; got dtype {a.dtype}.{hint} Convert with .astype(jnp.int32).")
    return a


def check_range(name: str, a: jax.Array, lo: int, hi: int, valid: jax.Array | None = None, why: str = "") -> None:
    """Concrete entries of ``a`` (those where ``valid``) must lie in ``[lo, hi]``."""
    if isinstance(a, jax.core.Tracer) or isinstance(valid, jax.core.Tracer):
        return
    values = np.asarray(a) if valid is None else np.asarray(a)[np.asarray(valid, bool)]
    bad = np.unique(values[(values < lo) | (values > hi)])
    if bad.size:
        shown = bad[:8].tolist()
        raise ValueError(f"{name} must be in [{lo}, {hi}]{why}; got {shown}{' ...' if bad.size > 8 else ''}.")


def same_shape(**arrays: Any) -> None:
    """The named arrays (``None`` skipped) must have one shape: nothing is broadcast."""
    shapes = {k: tuple(np.shape(v)) for k, v in arrays.items() if v is not None}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"{', '.join(shapes)} must have the same shape (nothing is broadcast); got "
                         + ", ".join(f"{k} {s}" for k, s in shapes.items()) + ".")


def mask(name: str, m: Any, shape: tuple) -> jax.Array:
    """A boolean mask of ``shape`` (all True when ``m`` is None); integer 0/1 masks are accepted."""
    if m is None:
        return jnp.ones(shape, bool)
    m = jnp.asarray(m)
    if not (m.dtype == jnp.bool_ or jnp.issubdtype(m.dtype, jnp.integer)):
        raise TypeError(f"{name} must be a boolean array (True = count this entry); got dtype {m.dtype}.")
    return m.astype(bool)


def one_example(name: str, a: Any, ndim: int, form: str) -> jax.Array:
    """``a`` must be ONE example of rank ``ndim``: a batch would be read as time-major and pooled wrongly."""
    a = jnp.asarray(a)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be one example, {form}; got shape {a.shape}. The models take one "
                         f"example: batch them with jax.vmap, e.g. jax.vmap(model.apply, in_axes=(None, 0, 0)).")
    return a
