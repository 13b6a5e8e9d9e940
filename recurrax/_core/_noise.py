"""Randomness through a key: the per-example key rule, and the ``Dropout`` and ``Zoneout`` wrappers.

A cell that needs noise has the :class:`recurrax.Stochastic` capability: ``sample_noise``
draws one example's noise, ``with_noise`` gives the deterministic cell that runs a step
with that noise held constant. :func:`draw` is the one place that turns ``scan``'s ``key``
into every example's noise (docs/packed.md, "The key rule"); :func:`bind` is the cell a
step runs.

Both wrappers are one computation, the inner cell's step with three constants
(:class:`_Elementwise`)::

    x        -> x * x_mask                               input dropout
    carry_in  = carry * carry_mask                        recurrent dropout
    carry_out = keep * carry + (1 - keep) * new           zoneout

Each is linear in what it touches and the constants do not depend on the carry, so every
capability of the inner cell carries over: the split form (the input mask is applied
before ``project``), the hand backward (multiply the cotangents by the same constants),
the Jacobian diagonal and the linear coefficients.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from recurrax._core._base import (
    Array,
    HandBackward,
    JacobianDiagonal,
    LinearRecurrence,
    Params,
    PRNGKey,
    SplitForm,
    Stochastic,
    offered_unless,
)
from recurrax._core._cells import LSTMCarry
from recurrax._core._validate import check_cell, preferred_projection

# -- scan's side: the key rule, and the cell each step runs --------------------------------------


def draw(cell: Any, params: Params, xs: Array, key: Any) -> tuple | None:
    """Every example's noise, ``(sequence_noise, step_noise)`` with leaves ``[*batch, ...]`` and
    ``[T, *batch, ...]``, or ``None`` (no key, or a cell without noise: evaluation mode).

    The key rule: one example (``xs`` ``[T, input_size]``) draws with ``key`` itself; in the
    batch form ``[T, *batch, input_size]`` the example of flattened (row-major) batch index
    ``i`` draws with ``jax.random.fold_in(key, i)``. So the batch form equals ``jax.vmap``
    of the one-example form over those keys. The noise is a constant: no gradient flows
    through it.
    """
    if key is None or not isinstance(cell, Stochastic):
        return None
    T, batch = xs.shape[0], tuple(xs.shape[1:-1])

    def sample(k, x):  # one example (also under the vmap below: shapes are per example)
        sequence, steps = cell.sample_noise(k, params, x)
        for leaf in jax.tree.leaves(steps):
            if leaf.shape[:1] != (T,):
                raise ValueError(f"{cell!r}.sample_noise must return step_noise whose leaves lead with the T={T} "
                                 f"steps of xs; got a leaf of shape {leaf.shape}.")
        return sequence, steps

    if not batch:
        sequence, steps = sample(key, xs)
    else:
        n = math.prod(batch)
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n, dtype=jnp.uint32))
        sequence, steps = jax.vmap(sample, in_axes=(0, 1))(keys, xs.reshape(T, n, xs.shape[-1]))
        sequence = jax.tree.map(lambda a: a.reshape(*batch, *a.shape[1:]), sequence)
        steps = jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1).reshape(T, *batch, *a.shape[2:]), steps)
    return jax.lax.stop_gradient((sequence, steps))


def step_noise(noise: tuple | None) -> Any:
    """The per-step part of ``noise`` (scanned over with ``xs``), ``None`` without noise."""
    return None if noise is None else noise[1]


def first_steps(noise: tuple | None, steps: int | None) -> tuple | None:
    """``noise`` for the first ``steps`` steps (``scan``'s static length)."""
    if noise is None or steps is None:
        return noise
    return noise[0], jax.tree.map(lambda a: a[:steps], noise[1])


def bind(cell: Any, noise: tuple | None, step: Any = None) -> Any:
    """The deterministic cell to run: ``cell`` itself without noise, else
    ``cell.with_noise(sequence_noise, step)`` (``step=None`` for ``project`` and
    ``step_bwd_params``, which see the whole sequence)."""
    return cell if noise is None else cell.with_noise(noise[0], step)


# -- the wrappers ------------------------------------------------------------------------------------


def _times(a: Array, mask: Array | None) -> Array:
    """``a`` ``[..., *batch, n]`` times ``mask`` ``[*batch, n]`` (broadcast over the leading steps)."""
    if mask is None:
        return a
    return a * mask.astype(a.dtype).reshape((1,) * (a.ndim - mask.ndim) + mask.shape)


def _mask_carry(mask: Any, carry: Any) -> Any:
    """``carry`` times ``mask`` leaf by leaf; a ``None`` in ``mask`` leaves that part as it is."""
    if mask is None:
        return carry
    return jax.tree.map(lambda m, c: c if m is None else c * m.astype(c.dtype), mask, carry,
                        is_leaf=lambda m: m is None)


def _keeps(keep: Any, like: Any) -> Any:
    """Zoneout's ``keep`` (a float, or masks like the carry) as a pytree like ``like``."""
    return jax.tree.map(lambda _: keep, like) if isinstance(keep, float) else keep


def _mix(keep: Any, old: Any, new: Any) -> Any:
    """``keep * old + (1 - keep) * new`` leaf by leaf; ``keep=None``: ``new``."""
    if keep is None:
        return new
    return jax.tree.map(lambda k, o, n: k * o + (1 - k) * n, _keeps(keep, new), old, new)


def _inner_lacks(protocol):
    """``declines`` for :func:`offered_unless`: the wrapped cell lacks ``protocol``."""

    def declines(wrapper) -> str | None:
        cell = wrapper.cell
        return None if isinstance(cell, protocol) else f"its cell {cell!r} has no {protocol.__name__}"

    return declines


class _Elementwise:
    """The inner cell ``self.cell`` with the constants of ``self._constants()``: ``(x_mask,
    carry_mask, keep)``, each ``None`` when unused (module docstring).

    Every capability of the inner cell is kept. Without the inner split form, ``xp`` is the
    raw input and the input mask is applied in the step's methods instead of ``project``.
    """

    cell: Any

    def _constants(self) -> tuple:
        raise NotImplementedError

    def init(self, key: PRNGKey, input_size: int) -> Params:
        """The inner cell's parameters: a wrapper adds none."""
        return self.cell.init(key, input_size)

    def initial_carry(self, batch_shape: tuple = (), dtype: Any = jnp.float32) -> Any:
        return self.cell.initial_carry(batch_shape, dtype)

    def preferred_projection(self, batch_shape: tuple) -> str:
        """The inner cell's."""
        return preferred_projection(self.cell, batch_shape)

    def _masked_in_step(self, v):
        # Without the inner split form, xp is the raw input: the step's methods apply the input
        # mask (and its transpose to xp's cotangent); with it, project() has applied it.
        return v if isinstance(self.cell, SplitForm) else _times(v, self._constants()[0])

    def _around(self, run, carry):
        """``run(carry_in)`` -> ``((new, y), extra)``; returns ``((carry_out, y), extra)``."""
        _, carry_mask, keep = self._constants()
        (new, y), extra = run(_mask_carry(carry_mask, carry))
        return (_mix(keep, carry, new), y), extra

    def apply(self, params: Params, carry: Any, x: Array) -> tuple[Any, Array]:
        x = _times(x, self._constants()[0])
        return self._around(lambda c: (self.cell.apply(params, c, x), None), carry)[0]

    @offered_unless(_inner_lacks(SplitForm))
    def project(self, params: Params, xs: Array) -> Any:
        """The inner cell's ``project`` of the masked input."""
        return self.cell.project(params, _times(xs, self._constants()[0]))

    @offered_unless(_inner_lacks(SplitForm))
    def step(self, params: Params, carry: Any, xp: Any) -> tuple[Any, Array]:
        return self._around(lambda c: (self.cell.step(params, c, xp), None), carry)[0]

    @offered_unless(_inner_lacks(HandBackward))
    def step_fwd(self, params: Params, carry: Any, xp: Any):
        return self._around(lambda c: self.cell.step_fwd(params, c, self._masked_in_step(xp)), carry)

    @offered_unless(_inner_lacks(HandBackward))
    def step_bwd(self, params: Params, res: Any, carry_bar: Any, y_bar: Array):
        """The inner cell's step backwards, between the constants' transposes."""
        _, carry_mask, keep = self._constants()
        new_bar = carry_bar
        if keep is not None:  # carry_out = keep * carry + (1 - keep) * new
            keeps = _keeps(keep, carry_bar)
            new_bar = jax.tree.map(lambda k, c: (1 - k) * c, keeps, carry_bar)
        inner_bar, d = self.cell.step_bwd(params, res, new_bar, y_bar)
        prev_bar = _mask_carry(carry_mask, inner_bar)
        if keep is not None:  # the kept part of the carry skips the step
            prev_bar = jax.tree.map(lambda p, k, c: p + k * c, prev_bar, keeps, carry_bar)
        return prev_bar, d

    @offered_unless(_inner_lacks(HandBackward))
    def step_bwd_params(self, params: Params, res: Any, d: Any):
        params_bar, xp_bar = self.cell.step_bwd_params(params, res, d)
        return params_bar, self._masked_in_step(xp_bar)

    @offered_unless(_inner_lacks(JacobianDiagonal))
    def step_jacobian_diagonal(self, params: Params, carry: Any, xp: Any):
        out, diag = self._around(lambda c: self.cell.step_jacobian_diagonal(params, c, self._masked_in_step(xp)),
                                 carry)
        _, carry_mask, keep = self._constants()
        diag = _mask_carry(carry_mask, diag)
        if keep is not None:  # d carry_out / d carry = keep + (1 - keep) * d new / d carry
            diag = jax.tree.map(lambda k, d: k + (1 - k) * d, _keeps(keep, diag), diag)
        return out, diag

    @offered_unless(_inner_lacks(LinearRecurrence))
    def linear_coefficients(self, params: Params, xp: Any):
        a, b = self.cell.linear_coefficients(params, self._masked_in_step(xp))
        _, carry_mask, keep = self._constants()
        a = _mask_carry(carry_mask, a)
        if keep is not None:  # keep * carry + (1 - keep) * (a * carry + b)
            keeps = _keeps(keep, a)
            a = jax.tree.map(lambda k, a: k + (1 - k) * a, keeps, a)
            b = jax.tree.map(lambda k, b: (1 - k) * b, keeps, b)
        return a, b


@dataclasses.dataclass(frozen=True, eq=False)
class _Held(_Elementwise):
    """A wrapper's step with its drawn noise held constant: what ``with_noise`` gives."""

    cell: Any
    x_mask: Any
    carry_mask: Any
    keep: Any

    def _constants(self):
        return self.x_mask, self.carry_mask, self.keep


class _Wrapper(_Elementwise):
    """What ``Dropout`` and ``Zoneout`` share: the noise of the wrapper and of a stochastic inner cell."""

    def __post_init__(self):
        check_cell(self.cell)
        for name in self._rates:
            rate = getattr(self, name)
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
                raise ValueError(f"{name} must be a number in [0, 1); got {rate!r}.")
            object.__setattr__(self, name, float(rate))

    def __repr__(self):
        # the rates that differ from their defaults (Zoneout's has none: always shown)
        rates = "".join(f", {f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                        if f.name in self._rates and getattr(self, f.name) != f.default)
        return f"{type(self).__name__}({self.cell!r}{rates})"

    def sample_noise(self, key: PRNGKey, params: Params, xs: Array) -> tuple[Any, Any]:
        """One example's noise for ``xs`` ``[T, input_size]``: the wrapper's own and, for a
        stochastic inner cell, the inner cell's (``(own, inner)`` in each part)."""
        own_key, inner_key = jax.random.split(key)
        sequence, steps = self._own_noise(own_key, xs)
        inner = self.cell.sample_noise(inner_key, params, xs) if isinstance(self.cell, Stochastic) else (None, None)
        return (sequence, inner[0]), (steps, inner[1])

    def with_noise(self, sequence_noise: Any, step_noise: Any) -> _Held:
        """The deterministic cell of one step with this noise (``step_noise=None``: for ``project``)."""
        own_step, inner_step = (None, None) if step_noise is None else step_noise
        cell = self.cell
        if isinstance(cell, Stochastic):
            cell = cell.with_noise(sequence_noise[1], inner_step)
        return _Held(cell, *self._held(sequence_noise[0], own_step))

    def _bernoulli(self, key, p, shape, dtype):
        return jax.random.bernoulli(key, p, shape).astype(dtype)


@dataclasses.dataclass(frozen=True, repr=False)
class Dropout(_Wrapper):
    """Variational dropout of any cell (Gal & Ghahramani 2016): one mask per sequence.

    With a ``key`` (:func:`recurrax.scan`, the layers, :func:`recurrax.manual_bptt`) each
    example draws, once for the whole sequence, a mask on the input ``x`` (each feature
    kept with probability ``1 - rate``) and one on the recurrent input (each unit kept
    with probability ``1 - recurrent_rate``), both scaled by ``1 / (1 - rate)`` so that
    their expectation is one (inverted dropout). Every step multiplies its ``x`` and the
    carry it reads by the same masks; its output and the carry it passes on are not
    masked. The recurrent input is the carry, except for an :class:`recurrax.LSTMCarry`,
    whose ``h`` only is masked (the cell state ``c`` meets no weight matrix). Without a
    key it is the inner cell exactly (evaluation mode).

    The masks are constants of the step, so the wrapper has every capability of the
    inner cell: the split form (the input mask is applied before ``project``), the hand
    backward, the Jacobian diagonal, the linear coefficients. It is
    :class:`recurrax.Stochastic`.

    Args:
      cell: any cell (also a stochastic one: its noise is drawn too).
      rate: the probability of dropping an input feature, in ``[0, 1)``.
      recurrent_rate: the probability of dropping a unit of the recurrent input.

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> cell = recurrax.Dropout(recurrax.LSTM(4), rate=0.25, recurrent_rate=0.25)
      >>> params = cell.init(jax.random.key(0), 3)
      >>> xs = jnp.ones((6, 2, 3))
      >>> _, ys_train = recurrax.scan(cell, params, xs, key=jax.random.key(1))
      >>> _, ys_eval = recurrax.scan(cell, params, xs)
      >>> _, ys_plain = recurrax.scan(recurrax.LSTM(4), params, xs)
      >>> bool((ys_eval == ys_plain).all()), bool((ys_train == ys_plain).all())
      (True, False)
    """

    cell: Any
    _: dataclasses.KW_ONLY
    rate: float = 0.0
    recurrent_rate: float = 0.0

    _rates = ("rate", "recurrent_rate")

    def _constants(self):
        return None, None, None  # evaluation mode: the expectation of an inverted mask is 1

    def _own_noise(self, key, xs):
        kx, kh = jax.random.split(key)
        x_mask = None
        if self.rate:
            x_mask = self._bernoulli(kx, 1 - self.rate, xs.shape[-1:], xs.dtype) / (1 - self.rate)
        carry_mask = None
        if self.recurrent_rate:
            # the carry's recurrent input: an LSTMCarry's h, every other leaf whole
            template = jax.tree.map(lambda c: LSTMCarry(c.h, None) if isinstance(c, LSTMCarry) else c,
                                    self.cell.initial_carry((), xs.dtype), is_leaf=lambda c: isinstance(c, LSTMCarry))
            leaves, treedef = jax.tree.flatten(template)
            keep = 1 - self.recurrent_rate
            masks = [self._bernoulli(k, keep, leaf.shape, leaf.dtype) / keep
                     for k, leaf in zip(jax.random.split(kh, len(leaves)), leaves)]
            carry_mask = jax.tree.unflatten(treedef, masks)
        return (x_mask, carry_mask), None

    def _held(self, own_sequence, own_step):
        return (*own_sequence, None)


@dataclasses.dataclass(frozen=True, repr=False)
class Zoneout(_Wrapper):
    """Zoneout of any cell (Krueger et al. 2017): units of the carry keep their previous value.

    With a ``key`` each example draws, for every step and every unit of the carry (for an
    LSTM both ``h`` and ``c``), whether that unit keeps its previous value (probability
    ``rate``) or takes the cell's new one: ``carry_t = m_t * carry_{t-1} + (1 - m_t) *
    new_t``. Without a key it is the expectation, ``carry_t = rate * carry_{t-1} + (1 -
    rate) * new_t``. The step's output is the inner cell's, as in the authors'
    ``ZoneoutWrapper``; only the carry is zoned.

    The masks are constants of the step and the update is linear in them, so the wrapper
    has every capability of the inner cell (split form, hand backward, Jacobian diagonal,
    linear coefficients). It is :class:`recurrax.Stochastic`.

    Args:
      cell: any cell (also a stochastic one: its noise is drawn too).
      rate: the probability that a unit keeps its previous value, in ``[0, 1)``.

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> cell = recurrax.Zoneout(recurrax.GRU(4), rate=0.5)
      >>> params = cell.init(jax.random.key(0), 3)
      >>> h, y = cell.apply(params, jnp.ones(4), jnp.ones(3))  # no key: the expectation
      >>> new, _ = recurrax.GRU(4).apply(params, jnp.ones(4), jnp.ones(3))
      >>> bool(jnp.allclose(h, 0.5 * jnp.ones(4) + 0.5 * new)), bool((y == new).all())
      (True, True)
    """

    cell: Any
    _: dataclasses.KW_ONLY
    rate: float

    _rates = ("rate",)

    def _constants(self):
        return None, None, self.rate

    def _own_noise(self, key, xs):
        leaves, treedef = jax.tree.flatten(self.cell.initial_carry((), xs.dtype))
        T = xs.shape[0]
        masks = [self._bernoulli(k, self.rate, (T, *leaf.shape), leaf.dtype)
                 for k, leaf in zip(jax.random.split(key, len(leaves)), leaves)]
        return None, jax.tree.unflatten(treedef, masks)

    def _held(self, own_sequence, own_step):
        return None, None, own_step
