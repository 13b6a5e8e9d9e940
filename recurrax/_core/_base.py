"""The cell protocol, the capability protocols, and the helpers everything else builds on.

A cell is any object with ``init``, ``initial_carry`` and ``apply`` (a structural
protocol); :class:`Cell` builds one from three plain functions. The optional capabilities
a cell may add (docs/cells.md) are the :class:`typing.Protocol` classes below, so
``isinstance(cell, recurrax.HandBackward)`` says whether the hand-derived backward pass
runs for that cell: presence is truthful, a cell that cannot run a capability for its
configuration (a ``Stack`` with one layer without it, an activation with no
hand-derived derivative) does not have the method at all.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

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


# -- capabilities ---------------------------------------------------------------------------


class _CapabilityMeta(type(Protocol)):
    # typing's own check reads the class (and, from Python 3.12, only static attributes),
    # so a method an instance declines would still count. Asking the instance keeps
    # presence truthful on every Python version.
    def __instancecheck__(cls, instance: Any) -> bool:
        return all(callable(getattr(instance, name, None)) for name in cls.__capability_methods__)


def _capability(cls):
    cls.__capability_methods__ = tuple(n for n, v in vars(cls).items() if callable(v) and not n.startswith("_"))
    return runtime_checkable(cls)


@_capability
class SplitForm(Protocol, metaclass=_CapabilityMeta):
    """The split form: the carry-independent input work apart from the recurrence.

    ``project(params, xs) -> xp`` takes any leading dimensions (``[..., input_size]``) and
    must not depend on the carry; ``step(params, carry, xp) -> (carry, y)`` is the rest of
    the step, so that ``apply(params, carry, x) == step(params, carry, project(params, x))``.
    :func:`recurrax.scan` runs ``project`` for all steps and examples in one call before
    the loop (``projection="before"``) or the one-step ``apply`` inside it
    (``"in_loop"``). A cell may also offer ``preferred_projection`` (a string, or a method
    of the batch shape): the placement ``scan`` uses by default.

    Example:
      >>> import recurrax
      >>> isinstance(recurrax.LSTM(8), recurrax.SplitForm)
      True
    """

    def project(self, params: Params, xs: Array) -> Any: ...

    def step(self, params: Params, carry: Carry, xp: Any) -> tuple[Carry, Array]: ...


@_capability
class HandBackward(Protocol, metaclass=_CapabilityMeta):
    """The hand-derived backward pass used by :func:`recurrax.manual_bptt` and
    ``scan(..., backward="manual")`` (docs/bptt.md).

    ``step_fwd(params, carry, xp) -> ((carry, y), res)`` is ``step`` (or ``apply``, without
    the split form) keeping residuals; ``step_bwd(params, res, carry_bar, y_bar) ->
    (carry_bar_prev, d)`` is one step backwards; ``step_bwd_params(params, res, d) ->
    (params_bar, xp_bar)`` gets ALL steps' residuals and ``d`` (leading ``[T, *batch]``)
    and returns the step's direct parameter gradient summed over time and batch, and the
    cotangent of ``project``'s output (recurrax transposes ``project`` itself).

    Example:
      >>> import jax, recurrax
      >>> isinstance(recurrax.GRU(8), recurrax.HandBackward)
      True
      >>> isinstance(recurrax.GRU(8, activation=jax.nn.gelu), recurrax.HandBackward)  # no derivative by hand
      False
    """

    def step_fwd(self, params: Params, carry: Carry, xp: Any) -> tuple[tuple[Carry, Array], Any]: ...

    def step_bwd(self, params: Params, res: Any, carry_bar: Carry, y_bar: Array) -> tuple[Carry, Any]: ...

    def step_bwd_params(self, params: Params, res: Any, d: Any) -> tuple[Params, Any]: ...


@_capability
class JacobianDiagonal(Protocol, metaclass=_CapabilityMeta):
    """The diagonal of the step Jacobian, for ``parallel_scan(method="quasi-deer")``.

    ``step_jacobian_diagonal(params, carry, xp) -> ((carry, y), diag)``: ``diag`` has the
    carry's structure and holds ``d carry_t[j] / d carry_{t-1}[j]``, at about one step's cost.

    Example:
      >>> import recurrax
      >>> isinstance(recurrax.LSTM(8), recurrax.JacobianDiagonal)
      True
    """

    def step_jacobian_diagonal(self, params: Params, carry: Carry, xp: Any) -> tuple[tuple[Carry, Array], Carry]: ...


@_capability
class LinearRecurrence(Protocol, metaclass=_CapabilityMeta):
    """A recurrence linear in the carry: ``carry_t = a * carry_{t-1} + b``.

    ``linear_coefficients(params, xp) -> (a, b)``, each with the carry's structure and
    independent of the carry; :func:`recurrax.parallel_scan` then evaluates the whole
    sequence exactly in one associative scan.

    Example:
      >>> import recurrax
      >>> [isinstance(c, recurrax.LinearRecurrence) for c in (recurrax.MinGRU(8), recurrax.GRU(8))]
      [True, False]
    """

    def linear_coefficients(self, params: Params, xp: Any) -> tuple[Carry, Carry]: ...


@_capability
class Stochastic(Protocol, metaclass=_CapabilityMeta):
    """Noise from a key: dropout, zoneout, any cell that is random while it trains.

    ``sample_noise(key, params, xs) -> (sequence_noise, step_noise)`` draws ONE example's
    noise for the sequence ``xs`` ``[T, input_size]`` (only its shape and dtype should
    matter): ``sequence_noise`` is drawn once and holds for every step (a variational
    mask), ``step_noise`` is a pytree whose leaves lead with ``[T]`` (a mask per step);
    either may be ``None``. ``with_noise(sequence_noise, step_noise_t) -> cell`` is the
    deterministic cell that runs step ``t`` with that noise held constant: a cell with
    ``init``, ``initial_carry``, ``apply`` and whichever capabilities it keeps, so the
    hand backward and the split form compose with the noise (docs/packed.md).

    :func:`recurrax.scan` draws the noise only when it gets a ``key`` (the batch form
    example by example with ``jax.random.fold_in(key, i)``, ``i`` the flattened batch
    index), as a constant (no gradient flows through it). It runs ``project`` and
    ``step_bwd_params`` on ``with_noise(sequence_noise, None)`` and each step's methods on
    ``with_noise(sequence_noise, step_noise[t])``. Without a key the cell runs as it is:
    its own methods are evaluation mode (deterministic).

    Example:
      >>> import recurrax
      >>> isinstance(recurrax.Dropout(recurrax.LSTM(8), rate=0.25), recurrax.Stochastic)
      True
      >>> isinstance(recurrax.LSTM(8), recurrax.Stochastic)
      False
    """

    def sample_noise(self, key: PRNGKey, params: Params, xs: Array) -> tuple[Any, Any]: ...

    def with_noise(self, sequence_noise: Any, step_noise: Any) -> Any: ...


class Declined(AttributeError):
    """Raised on access to a capability method that this instance cannot run."""


class _Offered:
    """A method that an instance has only when ``declines(instance)`` gives no reason."""

    def __init__(self, fn: Callable, declines: Callable[[Any], str | None]):
        functools.update_wrapper(self, fn)
        self.fn, self.declines = fn, declines

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, instance, owner=None):
        if instance is None:
            return self.fn
        reason = self.declines(instance)
        if reason:
            raise Declined(f"{instance!r} has no {self.name}(): {reason}")
        return types.MethodType(self.fn, instance)


def offered_unless(declines: Callable[[Any], str | None]):
    """Decorate a capability method so that it exists only for instances that can run it.

    ``declines(instance)`` returns ``None`` when the instance can, else the reason, which
    the library's errors quote (``hasattr`` and ``isinstance`` then say False).
    """
    return lambda fn: _Offered(fn, declines)


def output_size(module: Any, params: Params, input_size: int) -> int:
    """The size of the outputs a cell or a sequence layer gives for inputs of ``input_size``.

    Read from an abstract evaluation (no computation): a cell's one step, a layer's
    ``apply`` on a one-step sequence.

    Example:
      >>> import jax, recurrax
      >>> layer = recurrax.Bidirectional(recurrax.LSTM(8))
      >>> recurrax.output_size(layer, layer.init(jax.random.key(0), 3), 3)
      16
    """
    leaves = jax.tree.leaves(params)
    dtype = leaves[0].dtype if leaves else jnp.float32
    if callable(getattr(module, "initial_carry", None)):
        x = jax.ShapeDtypeStruct((input_size,), dtype)
        run = lambda p, x: module.apply(p, module.initial_carry((), dtype), x)[1]  # noqa: E731
    else:
        x = jax.ShapeDtypeStruct((1, input_size), dtype)
        run = lambda p, x: module.apply(p, x)[1]  # noqa: E731
    return jax.eval_shape(run, params, x).shape[-1]
