"""The three small protocols everything else is built from.

A :class:`Cell` is one step of a recurrence, a :class:`Layer` runs a whole sequence, and a
:class:`Module` is a stateless per-step map (a readout or an embedding). All three are
``NamedTuple``s of pure functions, in the style of ``optax.GradientTransformation``: they
hold no parameters, so they compose with ``jax.jit``, ``jax.vmap`` and ``jax.grad`` as
plain functions do.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax

Array = jax.Array
PRNGKey = jax.Array
Params = Any
Carry = Any


def add_bias(z: Array, b) -> Array:
    """``z + b`` for ``b`` ``[n]`` and ``z`` ``[..., n]``, broadcasting explicitly.

    Spelled out so the library also runs under ``jax_numpy_rank_promotion="raise"``.
    """
    return z if b is None else z + b.reshape((1,) * (z.ndim - 1) + b.shape)


class Cell(NamedTuple):
    """A cell made of three plain functions.

    Any object with these three methods is a cell (docs/cells.md): this is the way to
    make one from functions, in the style of ``optax.GradientTransformation``.

    Attributes:
      init: ``init(key, input_size) -> params``.
      initial_carry: ``initial_carry(batch_shape=(), dtype=jnp.float32) -> carry``, zeros.
      apply: ``apply(params, carry, x) -> (carry, y)``: exactly a ``jax.lax.scan`` body.
        ``x`` is ``[input_size]`` for one example and may carry leading batch dimensions
        (then the carry must have the same ones).

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> def init(key, input_size):
      ...     return jax.random.normal(key, (input_size, 4))
      >>> def initial_carry(batch_shape=(), dtype=jnp.float32):
      ...     return jnp.zeros((*batch_shape, 4), dtype)
      >>> def apply(A, h, x):  # a leaky integrator
      ...     h = 0.5 * h + jnp.tanh(x @ A)
      ...     return h, h
      >>> cell = recurrax.Cell(init, initial_carry, apply)
      >>> cell
      Cell(init, initial_carry, apply)
      >>> h, ys = recurrax.scan(cell, cell.init(jax.random.key(0), 3), jnp.ones((5, 3)))
      >>> ys.shape
      (5, 4)
    """

    init: Callable[[PRNGKey, int], Params]
    initial_carry: Callable[..., Carry]
    apply: Callable[[Params, Carry, Array], tuple[Carry, Array]]

    def __repr__(self):
        name = lambda f: getattr(f, "__qualname__", None) or repr(f)  # noqa: E731
        return f"Cell({name(self.init)}, {name(self.initial_carry)}, {name(self.apply)})"


class Layer(NamedTuple):
    """A sequence-level layer: runs a whole (one-example, time-major) sequence.

    Attributes:
      init: ``init(key, input_size) -> params``.
      apply: ``apply(params, xs, *, length=None, carry=None) -> (final_carry, ys)`` with
        ``xs`` ``[T, input_size]`` and ``ys`` ``[T, output_size]``, zero past ``length``.
    """

    init: Callable[[PRNGKey, int], Params]
    apply: Callable[..., tuple[Carry, Array]]


class Module(NamedTuple):
    """A stateless per-step map such as a readout or an embedding.

    Attributes:
      init: ``init(key, input_size) -> params`` (for an embedding, ``init(key)``).
      apply: ``apply(params, x) -> y``, broadcasting over leading dimensions.
    """

    init: Callable[..., Params]
    apply: Callable[[Params, Array], Array]
