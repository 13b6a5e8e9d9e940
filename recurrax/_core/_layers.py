"""Readout, inputs, and sequence-level layers (uni-, bidirectional, deep).

A recurrent model is ``s_t = sigma(U x_t + W s_{t-1} + b)``, ``y_t = O(V s_t + c)``: the
cell gives ``s_t``, :class:`Dense` is the readout ``O(V s + c)``, and :func:`one_hot` /
:class:`Embedding` turn token ids into the ``x_t``.

Every layer here is a frozen dataclass, like the cells: it compares and hashes by value
and has one ``init(key, input_size)``. Sequence layers take ``xs`` ``[T, input_size]``
(one example) or ``[T, *batch, input_size]`` (a time-major batch, as in
:func:`recurrax.scan`) with an optional ``length`` and return ``(final_carry, ys)``;
``jax.vmap`` over examples works too. A bidirectional layer runs its backward cell over
the valid prefix only (``xs[length-1]`` first), so padding never leaks into either
direction, exactly like ``torch.nn.utils.rnn.pack_padded_sequence``. Every sequence layer
also takes ``resets`` (packed sequences: a bidirectional layer runs each segment
backwards on its own) and ``key`` (noise of stochastic cells, docs/packed.md).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from recurrax._core import _cudnn
from recurrax._core._base import Array, PRNGKey, add_bias, output_size
from recurrax._core._cells import Initializer, _name, uniform_init
from recurrax._core._scan import scan
from recurrax._core._validate import (
    check_bool,
    check_cell,
    check_entries,
    check_inputs,
    check_key,
    check_positive_int,
)


def _short_repr(obj) -> str:
    """The dataclass's fields that differ from their defaults, positional ones first."""
    shown = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.default is dataclasses.MISSING and f.kw_only is False:
            shown.append(_name(value))
        elif f.default is not dataclasses.MISSING and value is not f.default and value != f.default:
            shown.append(f"{f.name}={_name(value)}")
    return f"{type(obj).__name__}({', '.join(shown)})"


@dataclasses.dataclass(frozen=True, repr=False)
class Dense:
    """The readout ``y = O(s V + c)``.

    Args:
      out_features: the size of ``y``.
      activation: ``O``; ``None`` returns the logits ``s V + c`` (what the losses take;
        ``jax.nn.softmax`` gives the probabilities ``y_hat``).
      kernel_init, bias_init: initializers; ``None`` means ``U(-1/sqrt(in), 1/sqrt(in))``.
      param_dtype: the dtype of the parameters.

    ``init(key, input_size)`` gives :class:`Dense.Params` (``V`` ``[input_size,
    out_features]``, ``c`` ``[out_features]``); ``apply(params, s)`` maps ``s``
    ``[..., input_size]`` to ``[..., out_features]``.

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> readout = recurrax.Dense(3, activation=jax.nn.softmax)
      >>> p = readout.init(jax.random.key(0), 8)
      >>> y = readout.apply(p, jnp.ones((5, 8)))
      >>> y.shape, bool(jnp.allclose(y.sum(-1), 1.0))
      ((5, 3), True)
    """

    out_features: int
    _: dataclasses.KW_ONLY
    activation: Callable[[Array], Array] | None = None
    kernel_init: Initializer | None = None
    bias_init: Initializer | None = None
    param_dtype: Any = jnp.float32

    class Params(NamedTuple):
        """Readout parameters: ``V`` ``[in, out]`` and ``c`` ``[out]`` (``y = O(s V + c)``)."""

        V: Array
        c: Array

    def __post_init__(self):
        check_positive_int("out_features", self.out_features)

    __repr__ = _short_repr

    def init(self, key: PRNGKey, input_size: int) -> Dense.Params:
        check_positive_int("input_size", input_size)
        default = uniform_init(1.0 / math.sqrt(input_size))
        kv, kc = jax.random.split(key)
        return Dense.Params(
            (self.kernel_init or default)(kv, (input_size, self.out_features), self.param_dtype),
            (self.bias_init or default)(kc, (self.out_features,), self.param_dtype),
        )

    def apply(self, params: Dense.Params, s: Array) -> Array:
        if s.shape[-1:] != params.V.shape[:1]:
            raise ValueError(f"s must be [..., {params.V.shape[0]}]; got {s.shape}.")
        y = add_bias(s @ params.V, params.c)
        return y if self.activation is None else self.activation(y)


def _check_ids(ids: Any, num_classes: int, what: str) -> Array:
    ids = jnp.asarray(ids)
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise TypeError(f"{what} takes integer token ids; got dtype {ids.dtype}.")
    if not isinstance(ids, jax.core.Tracer) and ids.size:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{what}: ids must be in [0, {num_classes}); got values in [{lo}, {hi}].")
    return ids


def one_hot(ids: Any, num_classes: int, dtype: Any = jnp.float32) -> Array:
    """1-hot vectors: ``ids`` ``[...]`` to ``[..., num_classes]``.

    Concrete ids outside ``[0, num_classes)`` raise; traced ones give all-zero rows (the
    check needs concrete values).

    Example:
      >>> import recurrax
      >>> recurrax.one_hot([3, 0], 5).tolist()
      [[0.0, 0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0]]
    """
    check_positive_int("num_classes", num_classes)
    return jax.nn.one_hot(_check_ids(ids, num_classes, "one_hot"), num_classes, dtype=dtype)


@dataclasses.dataclass(frozen=True, repr=False)
class Embedding:
    """A lookup table, the efficient equivalent of ``one_hot(ids) @ E``.

    Row ``E[i]`` is what the first layer's ``U`` would do to the 1-hot vector of word ``i``,
    without building the ``[T, vocab_size]`` one-hot matrix. Its input size is the
    vocabulary size, the width of the 1-hot vectors it replaces: ``init(key, vocab_size)``
    like every other layer's ``init(key, input_size)``. Concrete out-of-range ids raise;
    traced ones give NaN rows (never a silent wrong row).

    Args:
      features: the size of each vector.
      init_fn: an initializer; ``None`` means ``N(0, 1)`` as in PyTorch's ``nn.Embedding``.
      param_dtype: the dtype of the table.

    ``init(key, vocab_size)`` gives :class:`Embedding.Params` (``E`` ``[vocab_size,
    features]``); ``apply(params, ids)`` maps integer ``ids`` ``[...]`` to ``[..., features]``.

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> emb = recurrax.Embedding(4)
      >>> p = emb.init(jax.random.key(0), 10)
      >>> ids = jnp.array([1, 7])
      >>> bool(jnp.allclose(emb.apply(p, ids), recurrax.one_hot(ids, 10) @ p.E))
      True
    """

    features: int
    _: dataclasses.KW_ONLY
    init_fn: Initializer | None = None
    param_dtype: Any = jnp.float32

    class Params(NamedTuple):
        """Embedding table ``E`` ``[vocab_size, features]``."""

        E: Array

    def __post_init__(self):
        check_positive_int("features", self.features)

    __repr__ = _short_repr

    def init(self, key: PRNGKey, input_size: int) -> Embedding.Params:
        check_positive_int("input_size (the vocabulary size)", input_size)
        fn = self.init_fn or jax.nn.initializers.normal(1.0)
        return Embedding.Params(fn(key, (input_size, self.features), self.param_dtype))

    def apply(self, params: Embedding.Params, ids: Array) -> Array:
        vocab_size = params.E.shape[0]
        ids = _check_ids(ids, vocab_size, "Embedding")
        # take() counts a negative id from the end (a real row): make it out of range too.
        ids = jnp.where(ids < 0, vocab_size, ids)
        return jnp.take(params.E, ids, axis=0, mode="fill", fill_value=jnp.nan)


def _cudnn_takes_no_resets(resets):
    if resets is not None:
        raise ValueError('resets (packed sequences) needs impl="scan": cuDNN\'s kernel cannot restart the carry '
                         'inside a sequence.')


@dataclasses.dataclass(frozen=True, repr=False)
class Unidirectional:
    """A sequence layer running ``cell`` in one direction (see :func:`recurrax.scan`).

    Args:
      cell: the cell.
      reverse: run from the last valid step to the first, as in :func:`recurrax.scan`.
      unroll: passed to ``jax.lax.scan``.
      impl: ``"scan"`` (:func:`recurrax.scan`, any cell, any backend) or ``"cudnn"``:
        cuDNN's fused LSTM kernel through ``jax.experimental.rnn``, for the standard
        :class:`recurrax.LSTM` on NVIDIA GPUs with float32 inputs; same values and
        gradients (to float32 rounding), padding and ``length == 0`` included. Opt in
        where BENCHMARKS.md measures it faster; it does not run on CPU.
      precision: with ``impl="cudnn"`` only: the kernel's matrix products, ``"highest"``
        (float32; ``None`` means this) or ``"tensorfloat32"`` (TF32 tensor cores, faster,
        about 1e-3 relative rounding per product). ``jax.experimental.rnn`` would allow
        TF32 when given no precision; recurrax always passes one.

    ``init(key, input_size)`` is the cell's; ``apply(params, xs, *, length=None,
    carry=None, resets=None, key=None) -> (final_carry, ys)`` is :func:`recurrax.scan` with
    those arguments (``impl="cudnn"`` takes no ``resets``).

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> layer = recurrax.Unidirectional(recurrax.LSTM(4))
      >>> p = layer.init(jax.random.key(0), 3)
      >>> carry, ys = layer.apply(p, jnp.ones((6, 3)), length=4)
      >>> ys.shape
      (6, 4)
    """

    cell: Any
    _: dataclasses.KW_ONLY
    reverse: bool = False
    unroll: int = 1
    impl: str = "scan"
    precision: str | None = None

    def __post_init__(self):
        check_cell(self.cell)
        _cudnn.check_impl(self.impl, [self.cell], self.precision)
        check_bool("reverse", self.reverse)

    __repr__ = _short_repr

    def init(self, key: PRNGKey, input_size: int) -> Any:
        return self.cell.init(key, input_size)

    def apply(self, params: Any, xs: Array, *, length: Any = None, carry: Any = None, resets: Any = None,
              key: Any = None) -> tuple[Any, Array]:
        if self.impl == "scan":
            return scan(self.cell, params, xs, carry, length=length, reverse=self.reverse, unroll=self.unroll,
                        resets=resets, key=key)
        _cudnn_takes_no_resets(resets)
        xs, carry = check_inputs(self.cell, xs, carry)
        (final,), ys = _cudnn.lstm_layer([params], xs, [carry], length, self.reverse, self.precision)
        return final, ys


@dataclasses.dataclass(frozen=True, repr=False)
class Bidirectional:
    """Forward and backward cells over the valid prefix, outputs concatenated.

    ``ys[t] = concat(forward_ys[t], backward_ys[t])``, where the backward cell reads
    ``xs[length-1], ..., xs[0]``; both halves are zero past ``length``.

    Args:
      forward: the forward cell.
      backward: the backward cell; ``None`` means the same cell as ``forward`` (with its
        own parameters).
      unroll: passed to ``jax.lax.scan``.
      impl: ``"scan"`` or ``"cudnn"`` (both directions in one cuDNN call), as in
        :class:`Unidirectional`.
      precision: the cuDNN kernel's, as in :class:`Unidirectional`.

    Params are :class:`Bidirectional.Params` ``(forward, backward)``; ``apply(params, xs,
    *, length=None, carry=None, resets=None, key=None)`` takes and returns a
    :class:`Bidirectional.Carry` ``(forward, backward)`` (either entry of a given carry may
    be ``None``). With ``resets`` the backward cell runs each packed segment backwards on
    its own; with a ``key`` the forward cell draws its noise with
    ``jax.random.fold_in(key, 0)``, the backward one with ``fold_in(key, 1)``.

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> layer = recurrax.Bidirectional(recurrax.GRU(4))
      >>> p = layer.init(jax.random.key(0), 3)
      >>> carry, ys = layer.apply(p, jnp.ones((6, 3)), length=4)
      >>> ys.shape, bool((ys[4:] == 0).all()), bool((ys[0, 4:] == carry.backward).all())
      ((6, 8), True, True)
    """

    forward: Any
    backward: Any = None
    _: dataclasses.KW_ONLY
    unroll: int = 1
    impl: str = "scan"
    precision: str | None = None

    class Params(NamedTuple):
        """Parameters of a bidirectional layer: one set per direction."""

        forward: Any
        backward: Any

    class Carry(NamedTuple):
        """The carry of a bidirectional layer: one per direction."""

        forward: Any
        backward: Any

    def __post_init__(self):
        if self.backward is None:
            object.__setattr__(self, "backward", self.forward)
        check_cell(self.forward, "forward")
        check_cell(self.backward, "backward")
        _cudnn.check_impl(self.impl, [self.forward, self.backward], self.precision)

    def __repr__(self):
        shown = [repr(self.forward)] + ([] if self.backward == self.forward else [f"backward={self.backward!r}"])
        shown += [f"{k}={v!r}" for k, v, d in (("unroll", self.unroll, 1), ("impl", self.impl, "scan"),
                                               ("precision", self.precision, None)) if v != d]
        return f"Bidirectional({', '.join(shown)})"

    def init(self, key: PRNGKey, input_size: int) -> Bidirectional.Params:
        kf, kb = jax.random.split(key)
        return Bidirectional.Params(self.forward.init(kf, input_size), self.backward.init(kb, input_size))

    def apply(self, params: Any, xs: Array, *, length: Any = None, carry: Any = None, resets: Any = None,
              key: Any = None):
        pf, pb = check_entries("params", params, 2, "a bidirectional layer", "direction")
        cf, cb = (None, None) if carry is None else check_entries("carry", carry, 2, "a bidirectional layer",
                                                                  "direction")
        if self.impl == "cudnn":
            _cudnn_takes_no_resets(resets)
            xs, cf = check_inputs(self.forward, xs, cf)
            _, cb = check_inputs(self.backward, xs, cb)
            finals, ys = _cudnn.lstm_layer([pf, pb], xs, [cf, cb], length, precision=self.precision)
            return Bidirectional.Carry(*finals), ys
        key = check_key(key)
        kf, kb = (None, None) if key is None else (jax.random.fold_in(key, 0), jax.random.fold_in(key, 1))
        cf, yf = scan(self.forward, pf, xs, cf, length=length, unroll=self.unroll, resets=resets, key=kf)
        cb, yb = scan(self.backward, pb, xs, cb, length=length, reverse=True, unroll=self.unroll, resets=resets,
                      key=kb)
        return Bidirectional.Carry(cf, cb), jnp.concatenate([yf, yb], axis=-1)


@dataclasses.dataclass(frozen=True, repr=False, init=False)
class Deep:
    """Layers run one after another over the whole sequence (``torch.nn.LSTM(num_layers=k)``).

    Layer ``k+1`` reads layer ``k``'s outputs ``ys``; every layer gets the same ``length``
    and ``resets``, and layer ``k`` the key ``jax.random.fold_in(key, k)``.
    Use ``Deep`` for layers that each see the whole sequence (bidirectional ones, or a
    model converted from ``torch.nn.LSTM``); use :class:`recurrax.Stack` for cells that
    advance together within each step (one cell, so every cell API takes it). For
    unidirectional layers both give the same numbers.

    Args:
      *layers: one or more sequence layers (:class:`Unidirectional`,
        :class:`Bidirectional`, another ``Deep``, or any object with ``init`` and
        ``apply(params, xs, *, length, carry)``; ``resets`` and ``key`` are passed to a
        layer only when given).

    Params and final carry are tuples, one entry per layer.

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> net = recurrax.Deep(*[recurrax.Bidirectional(recurrax.LSTM(4)) for _ in range(2)])
      >>> p = net.init(jax.random.key(0), 3)
      >>> carries, ys = net.apply(p, jnp.ones((6, 3)), length=5)
      >>> ys.shape, len(carries)
      ((6, 8), 2)
    """

    layers: tuple

    def __init__(self, *layers: Any):
        if not layers:
            raise ValueError("Deep needs at least one layer; got none.")
        for i, layer in enumerate(layers):
            if hasattr(layer, "initial_carry"):
                raise TypeError(f"Deep takes layers; argument {i} is a cell ({layer!r}). Wrap it with "
                                f"recurrax.Unidirectional or recurrax.Bidirectional.")
            if not (callable(getattr(layer, "init", None)) and callable(getattr(layer, "apply", None))):
                raise TypeError(f"Deep takes layers (init and apply); argument {i} is a {type(layer).__name__}.")
        object.__setattr__(self, "layers", tuple(layers))

    def __repr__(self):
        return f"Deep({', '.join(map(repr, self.layers))})"

    def init(self, key: PRNGKey, input_size: int) -> tuple:
        params = []
        for layer, k in zip(self.layers, jax.random.split(key, len(self.layers))):
            params.append(layer.init(k, input_size))
            input_size = output_size(layer, params[-1], input_size)
        return tuple(params)

    def apply(self, params: tuple, xs: Array, *, length: Any = None, carry: Any = None, resets: Any = None,
              key: Any = None) -> tuple[tuple, Array]:
        owner = f"a deep layer of {len(self.layers)} layers"
        params = check_entries("params", params, len(self.layers), owner, "layer")
        carry = ((None,) * len(self.layers) if carry is None
                 else check_entries("carry", carry, len(self.layers), owner, "layer"))
        key, finals = check_key(key), []
        for k, (layer, p, c) in enumerate(zip(self.layers, params, carry)):
            # only what was given: a user's layer written before resets and key keeps working
            extra = {} if resets is None else {"resets": resets}
            if key is not None:
                extra["key"] = jax.random.fold_in(key, k)
            c, xs = layer.apply(p, xs, length=length, carry=c, **extra)
            finals.append(c)
        return tuple(finals), xs
