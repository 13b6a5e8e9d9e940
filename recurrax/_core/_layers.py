"""Readout, inputs, and sequence-level layers (uni-, bidirectional, deep).

A recurrent model is ``s_t = sigma(U x_t + W s_{t-1} + b)``, ``y_t = O(V s_t + c)``: the
cell gives ``s_t``, :func:`dense` is the readout ``O(V s + c)``, and :func:`one_hot` /
:func:`embedding` turn token ids into the ``x_t``.

Sequence layers take ``xs`` ``[T, input_size]`` (one example) or ``[T, *batch,
input_size]`` (a time-major batch, as in :func:`recurrax.scan`) with an optional
``length`` and return ``(final_carry, ys)``; ``jax.vmap`` over examples works too. A bidirectional layer runs
its backward cell over the valid prefix only (``xs[length-1]`` first), so padding never
leaks into either direction, exactly like ``torch.nn.utils.rnn.pack_padded_sequence``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from recurrax._core._base import Array, Layer, Module, PRNGKey, add_bias
from recurrax._core._cells import Initializer, uniform_init
from recurrax._core._validate import check_bool, check_cell, check_entries, check_inputs, check_positive_int
from recurrax._core import _cudnn
from recurrax._core._scan import scan


class DenseParams(NamedTuple):
    """Readout parameters: ``V`` ``[in, out]`` and ``c`` ``[out]`` (``y = O(s V + c)``)."""

    V: Array
    c: Array


def dense(
    out_features: int,
    *,
    activation: Optional[Callable[[Array], Array]] = None,
    kernel_init: Optional[Initializer] = None,
    bias_init: Optional[Initializer] = None,
    param_dtype: Any = jnp.float32,
) -> Module:
    """The readout ``y = O(s V + c)``.

    Args:
      out_features: the size of ``y``.
      activation: ``O``; ``None`` returns the logits ``s V + c`` (what the losses take;
        ``jax.nn.softmax`` gives the probabilities ``y_hat``).
      kernel_init, bias_init: initializers; ``None`` means ``U(-1/sqrt(in), 1/sqrt(in))``.
      param_dtype: the dtype of the parameters.

    Returns:
      A :class:`Module`: ``init(key, in_features) -> DenseParams``, ``apply(params, s)``
      with ``s`` ``[..., in_features]`` giving ``[..., out_features]``.

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> readout = recurrax.dense(3, activation=jax.nn.softmax)
      >>> p = readout.init(jax.random.key(0), 8)
      >>> y = readout.apply(p, jnp.ones((5, 8)))
      >>> y.shape, bool(jnp.allclose(y.sum(-1), 1.0))
      ((5, 3), True)
    """
    check_positive_int("out_features", out_features)

    def init(key: PRNGKey, in_features: int) -> DenseParams:
        check_positive_int("in_features", in_features)
        default = uniform_init(1.0 / math.sqrt(in_features))
        kv, kc = jax.random.split(key)
        return DenseParams(
            (kernel_init or default)(kv, (in_features, out_features), param_dtype),
            (bias_init or default)(kc, (out_features,), param_dtype),
        )

    def apply(params: DenseParams, s: Array) -> Array:
        if s.shape[-1:] != params.V.shape[:1]:
            raise ValueError(f"s must be [..., {params.V.shape[0]}]; got {s.shape}.")
        y = add_bias(s @ params.V, params.c)
        return y if activation is None else activation(y)

    return Module(init, apply)


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


class EmbeddingParams(NamedTuple):
    """Embedding table ``E`` ``[vocab_size, features]``."""

    E: Array


def embedding(
    vocab_size: int,
    features: int,
    *,
    init_fn: Optional[Initializer] = None,
    param_dtype: Any = jnp.float32,
) -> Module:
    """A lookup table, the efficient equivalent of ``one_hot(ids) @ E``.

    Row ``E[i]`` is what the first layer's ``U`` would do to the 1-hot vector of word ``i``,
    without building the ``[T, vocab_size]`` one-hot matrix. Concrete out-of-range ids
    raise; traced ones give NaN rows (never a silent wrong row).

    Args:
      vocab_size: the number of token ids.
      features: the size of each vector.
      init_fn: an initializer; ``None`` means ``N(0, 1)`` as in PyTorch's ``nn.Embedding``.
      param_dtype: the dtype of the table.

    Returns:
      A :class:`Module`: ``init(key) -> EmbeddingParams``, ``apply(params, ids)`` with
      ``ids`` ``[...]`` integer giving ``[..., features]``.

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> emb = recurrax.embedding(10, 4)
      >>> p = emb.init(jax.random.key(0))
      >>> ids = jnp.array([1, 7])
      >>> bool(jnp.allclose(emb.apply(p, ids), recurrax.one_hot(ids, 10) @ p.E))
      True
    """
    check_positive_int("vocab_size", vocab_size)
    check_positive_int("features", features)

    def init(key: PRNGKey, input_size: Optional[int] = None) -> EmbeddingParams:
        if input_size is not None and input_size != vocab_size:
            raise ValueError(f"this embedding has vocab_size={vocab_size}; init got input_size={input_size}.")
        fn = init_fn or jax.nn.initializers.normal(1.0)
        return EmbeddingParams(fn(key, (vocab_size, features), param_dtype))

    def apply(params: EmbeddingParams, ids: Array) -> Array:
        ids = _check_ids(ids, vocab_size, "embedding")
        # take() counts a negative id from the end (a real row): make it out of range too.
        ids = jnp.where(ids < 0, vocab_size, ids)
        return jnp.take(params.E, ids, axis=0, mode="fill", fill_value=jnp.nan)

    return Module(init, apply)


def unidirectional(cell: Any, *, reverse: bool = False, unroll: int = 1, impl: str = "scan") -> Layer:
    """A sequence layer running ``cell`` in one direction (see :func:`recurrax.scan`).

    Args:
      cell: the cell.
      reverse: run from the last valid step to the first, as in :func:`recurrax.scan`.
      unroll: passed to ``jax.lax.scan``.
      impl: ``"scan"`` (:func:`recurrax.scan`, any cell, any backend) or ``"cudnn"``:
        cuDNN's fused LSTM kernel through ``jax.experimental.rnn``, for the standard
        :func:`recurrax.lstm` on NVIDIA GPUs with float32 inputs; same values and
        gradients (to float32 rounding), padding and ``length == 0`` included. Opt in
        where BENCHMARKS.md measures it faster; it does not run on CPU.

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> layer = recurrax.unidirectional(recurrax.lstm(4))
      >>> p = layer.init(jax.random.key(0), 3)
      >>> carry, ys = layer.apply(p, jnp.ones((6, 3)), length=4)
      >>> ys.shape
      (6, 4)
    """

    check_cell(cell)
    _cudnn.check_impl(impl, [cell])
    reverse = check_bool("reverse", reverse)

    def apply(params, xs, *, length=None, carry=None):
        if impl == "scan":
            return scan(cell, params, xs, carry, length=length, reverse=reverse, unroll=unroll)
        xs, carry, length = check_inputs(cell, xs, carry, length)
        (final,), ys = _cudnn.lstm_layer([params], xs, [carry], length, reverse)
        return final, ys

    return Layer(cell.init, apply)


class BidirectionalParams(NamedTuple):
    """Parameters of a bidirectional layer: one set per direction."""

    forward: Any
    backward: Any


def bidirectional(forward: Any, backward: Optional[Any] = None, *, unroll: int = 1, impl: str = "scan") -> Layer:
    """Forward and backward cells over the valid prefix, outputs concatenated.

    ``ys[t] = concat(forward_ys[t], backward_ys[t])``, where the backward cell reads
    ``xs[length-1], ..., xs[0]``; both halves are zero past ``length``. The final carry is
    a :class:`BidirectionalParams`-shaped pair ``(forward_carry, backward_carry)``.

    Args:
      forward: the forward cell.
      backward: the backward cell; ``None`` means the same kind of cell as ``forward``
        (with its own parameters).
      unroll: passed to ``jax.lax.scan``.
      impl: ``"scan"`` or ``"cudnn"`` (both directions in one cuDNN call), as in
        :func:`unidirectional`.

    Returns:
      A :class:`Layer` with params :class:`BidirectionalParams`; its ``apply`` takes a
      ``carry`` pair ``(forward_carry, backward_carry)`` (either may be ``None``).

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> layer = recurrax.bidirectional(recurrax.gru(4))
      >>> p = layer.init(jax.random.key(0), 3)
      >>> (hf, hb), ys = layer.apply(p, jnp.ones((6, 3)), length=4)
      >>> ys.shape, bool((ys[4:] == 0).all()), bool((ys[0, 4:] == hb).all())
      ((6, 8), True, True)
    """
    backward = forward if backward is None else backward
    check_cell(forward, "forward")
    check_cell(backward, "backward")
    _cudnn.check_impl(impl, [forward, backward])

    def init(key: PRNGKey, input_size: int) -> BidirectionalParams:
        kf, kb = jax.random.split(key)
        return BidirectionalParams(forward.init(kf, input_size), backward.init(kb, input_size))

    def apply(params, xs, *, length=None, carry=None):
        pf, pb = check_entries("params", params, 2, "a bidirectional layer", "direction")
        cf, cb = (None, None) if carry is None else check_entries("carry", carry, 2, "a bidirectional layer",
                                                                  "direction")
        if impl == "cudnn":
            xs, cf, length = check_inputs(forward, xs, cf, length)
            _, cb, _ = check_inputs(backward, xs, cb, length)
            finals, ys = _cudnn.lstm_layer([pf, pb], xs, [cf, cb], length)
            return BidirectionalParams(*finals), ys
        cf, yf = scan(forward, pf, xs, cf, length=length, unroll=unroll)
        cb, yb = scan(backward, pb, xs, cb, length=length, reverse=True, unroll=unroll)
        return BidirectionalParams(cf, cb), jnp.concatenate([yf, yb], axis=-1)

    return Layer(init, apply)


def _output_features(layer: Layer, params, input_size: int, dtype) -> int:
    xs = jax.ShapeDtypeStruct((1, input_size), dtype)
    _, ys = jax.eval_shape(lambda p, xs: layer.apply(p, xs), params, xs)
    return ys.shape[-1]


def deep(*layers: Layer) -> Layer:
    """Layers run one after another over the whole sequence (``torch.nn.LSTM(num_layers=k)``).

    Layer ``k+1`` reads layer ``k``'s outputs ``ys``; every layer gets the same ``length``.
    Unlike :func:`recurrax.stack` (layers interleaved within a step), this allows
    bidirectional layers; for unidirectional layers both give the same numbers.

    Args:
      *layers: one or more :class:`Layer`.

    Returns:
      A :class:`Layer` whose params and final carry are tuples, one entry per layer.

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> net = recurrax.deep(*[recurrax.bidirectional(recurrax.lstm(4)) for _ in range(2)])
      >>> p = net.init(jax.random.key(0), 3)
      >>> carries, ys = net.apply(p, jnp.ones((6, 3)), length=5)
      >>> ys.shape, len(carries)
      ((6, 8), 2)
    """
    if not layers:
        raise ValueError("deep needs at least one layer; got none.")
    for i, layer in enumerate(layers):
        if hasattr(layer, "initial_carry"):
            raise TypeError(f"deep takes layers; argument {i} is a cell ({layer!r}). Wrap it with "
                            f"recurrax.unidirectional or recurrax.bidirectional.")
        if not (callable(getattr(layer, "init", None)) and callable(getattr(layer, "apply", None))):
            raise TypeError(f"deep takes layers (init and apply); argument {i} is a {type(layer).__name__}.")

    def init(key: PRNGKey, input_size: int) -> tuple:
        params = []
        for layer, k in zip(layers, jax.random.split(key, len(layers))):
            params.append(layer.init(k, input_size))
            dtype = jax.tree.leaves(params[-1])[0].dtype
            input_size = _output_features(layer, params[-1], input_size, dtype)
        return tuple(params)

    def apply(params, xs, *, length=None, carry=None):
        owner = f"a deep layer of {len(layers)} layers"
        params = check_entries("params", params, len(layers), owner, "layer")
        carry = (None,) * len(layers) if carry is None else check_entries("carry", carry, len(layers), owner, "layer")
        finals = []
        for layer, p, c in zip(layers, params, carry):
            c, xs = layer.apply(p, xs, length=length, carry=c)
            finals.append(c)
        return tuple(finals), xs

    return Layer(init, apply)
