"""The lecture's three problem types as pure-function models over the core.

- n to 1, :func:`sequence_classifier`: encode, pool (final state, mean or max), read out.
- n to n, :func:`sequence_tagger`: read out at every step (uni- or bidirectional, deep).
- n to m, :func:`encoder_decoder`: the encoder's final state starts a decoder trained with
  teacher forcing and run greedily (bounded length, stops at ``<eos>``) at inference.

Each model takes ONE example (batch it with ``jax.vmap``) whose inputs are real-valued
frames (``features=F``: ``[T, F]``), 1-hot words as in the lecture (``vocab_size=V``:
ids ``[T]``, one-hot inside), or embedded words (``vocab_size=V, embed_dim=D``). Token
ids outside ``[0, V)`` raise when concrete; traced ones (under ``vmap``/``jit``) become
NaN inputs, so the logits are NaN rather than plausible.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from recurrax._apps._checks import one_example
from recurrax._core._base import Array, PRNGKey, output_size
from recurrax._core._layers import Dense, Embedding, Unidirectional, one_hot
from recurrax._core._scan import scan
from recurrax._core._validate import check_positive_int


class Model(NamedTuple):
    """A model as two pure functions: ``init(key) -> params`` and ``apply(params, inputs, length=None)``."""

    init: Callable[[PRNGKey], Any]
    apply: Callable[..., Array]


class _Inputs(NamedTuple):
    """How a model turns its inputs into vectors: ``init(key)`` and ``apply(params, xs)``."""

    init: Callable[[PRNGKey], Any]
    apply: Callable[[Any, Array], Array]


def _inputs(features, vocab_size, embed_dim) -> tuple[_Inputs, int]:
    """The input representation and its size."""
    if (features is None) == (vocab_size is None):
        raise ValueError("give exactly one of features= (real-valued inputs) and vocab_size= (token ids).")
    if features is not None:
        if embed_dim is not None:
            raise ValueError("embed_dim only applies to token inputs (vocab_size=).")
        return _Inputs(lambda key: None, lambda p, xs: one_example("xs", xs, 2, f"[T, {features}] features")), features
    ids = lambda xs: one_example("xs", xs, 1, f"[T] token ids in [0, {vocab_size})")
    if embed_dim is None:  # the lecture's 1-hot vectors

        def one_hot_rows(p, xs):
            xs = ids(xs)
            # one_hot gives a traced out-of-range id a zero row, a plausible input; NaN, as embedding does
            return jnp.where(((xs >= 0) & (xs < vocab_size))[:, None], one_hot(xs, vocab_size), jnp.nan)

        return _Inputs(lambda key: None, one_hot_rows), vocab_size
    emb = Embedding(embed_dim)
    return _Inputs(lambda key: emb.init(key, vocab_size), lambda p, xs: emb.apply(p, ids(xs))), embed_dim


def _as_layer(encoder):
    """A cell (anything with ``initial_carry``) becomes a unidirectional layer; a layer stays."""
    if callable(getattr(encoder, "initial_carry", None)):
        return Unidirectional(encoder)
    if not (callable(getattr(encoder, "init", None)) and callable(getattr(encoder, "apply", None))):
        raise TypeError(f"encoder must be a cell or a layer; got {type(encoder).__name__}.")
    return encoder


def _encoder_model(encoder, out_size, features, vocab_size, embed_dim, head):
    """Shared by the classifier and the tagger: inputs -> encoder -> ``head(ys, length)`` -> readout."""
    layer = _as_layer(encoder)
    inputs, in_size = _inputs(features, vocab_size, embed_dim)
    readout = Dense(out_size)

    def init(key: PRNGKey) -> dict:
        ki, ke, kr = jax.random.split(key, 3)
        enc = layer.init(ke, in_size)
        hidden = output_size(layer, enc, in_size)
        return {"inputs": inputs.init(ki), "encoder": enc, "readout": readout.init(kr, hidden)}

    def apply(params: dict, xs: Array, length: Array | None = None) -> Array:
        _, ys = layer.apply(params["encoder"], inputs.apply(params["inputs"], xs), length=length)
        T = ys.shape[0]
        # the pooling sees the length the encoder used: scan clips a traced one to [0, T]
        return readout.apply(params["readout"], head(ys, T if length is None else jnp.clip(length, 0, T)))

    return Model(init, apply)


def _pool(pooling: str):
    """Pool ``ys`` ``[T, H]`` (zero past ``length``) to ``[H]``; an empty sequence pools to the
    zero state under every pooling, so its logits and gradients stay finite."""

    def last(ys, length):
        if ys.shape[0] == 0:
            return jnp.zeros(ys.shape[1:], ys.dtype)
        return ys[jnp.maximum(length - 1, 0)]

    def mean(ys, length):
        return jnp.sum(ys, axis=0) / jnp.maximum(length, 1).astype(ys.dtype)

    def max_(ys, length):
        valid = (jnp.arange(ys.shape[0]) < length)[:, None]
        pooled = jnp.max(jnp.where(valid, ys, -jnp.inf), axis=0, initial=-jnp.inf)
        # no valid step: -inf would make the logits, and every gradient through them, NaN
        return jnp.where(length > 0, pooled, 0.0)

    pools = {"last": last, "mean": mean, "max": max_}
    if pooling not in pools:
        raise ValueError(f"pooling must be one of {sorted(pools)}; got {pooling!r}.")
    return pools[pooling]


def sequence_classifier(
    encoder,
    num_classes: int,
    *,
    features: int | None = None,
    vocab_size: int | None = None,
    embed_dim: int | None = None,
    pooling: str = "last",
) -> Model:
    """n inputs, 1 output: polarity of a sentence, the exercise of a yoga video.

    ``logits = V pool(s_1..s_length) + c``; ``pooling="last"`` is the lecture's final state
    ``s_length`` (for a unidirectional encoder), ``"mean"``/``"max"`` pool the valid states
    (use them with bidirectional encoders, whose last output has seen one word backwards).

    Args:
      encoder: a cell (run forwards) or a sequence layer (e.g. :class:`recurrax.Bidirectional`, :class:`recurrax.Deep`).
      num_classes: the number of classes ``C``.
      features, vocab_size, embed_dim: the input representation (module docstring).
      pooling: ``"last"``, ``"mean"`` or ``"max"``; an empty sequence (``length=0``) pools
        to the zero state under each, so its logits are the readout's bias ``c``.

    Returns:
      A :class:`Model`; ``apply(params, inputs, length=None)`` gives logits ``[C]`` for one
      example (``inputs`` ``[T, F]`` or ``[T]`` ids; batch it with ``jax.vmap``).

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> model = recurrax.models.sequence_classifier(recurrax.GRU(16), 2, vocab_size=24)
      >>> params = model.init(jax.random.key(0))
      >>> ids = jnp.array([[1, 4, 5, 6, 2, 3], [1, 4, 7, 2, 3, 3]])  # <sos> ... <eos> <pad>
      >>> logits = jax.vmap(model.apply, in_axes=(None, 0, 0))(params, ids, jnp.array([5, 4]))
      >>> logits.shape
      (2, 2)
    """
    return _encoder_model(encoder, num_classes, features, vocab_size, embed_dim, _pool(pooling))


def sequence_tagger(
    encoder,
    num_tags: int,
    *,
    features: int | None = None,
    vocab_size: int | None = None,
    embed_dim: int | None = None,
) -> Model:
    """n inputs, n outputs: a tag for every step (POS tagging, per-frame phonemes).

    ``logits_t = V s_t + c`` at every step; with a bidirectional encoder ``s_t`` has seen
    the whole sentence, so "bank"'s tag can depend on the words on both sides.

    Returns:
      A :class:`Model`; ``apply(params, inputs, length=None)`` gives logits ``[T, num_tags]``
      (rows past ``length`` are the readout of a zero state; the loss ignores them).

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> model = recurrax.models.sequence_tagger(recurrax.Bidirectional(recurrax.LSTM(8)), 5,
      ...                                  vocab_size=30, embed_dim=12)
      >>> params = model.init(jax.random.key(0))
      >>> model.apply(params, jnp.array([4, 9, 2, 3]), 3).shape
      (4, 5)
    """
    return _encoder_model(encoder, num_tags, features, vocab_size, embed_dim, lambda ys, length: ys)


class EncoderDecoder(NamedTuple):
    """An n-to-m model.

    Attributes:
      init: ``init(key) -> params``.
      apply: ``apply(params, src, tgt_in, *, src_length=None, tgt_length=None) -> logits
        [M, V_tgt]``, teacher forcing: ``tgt_in`` is ``[<sos>, y_1, ..., y_{m-1}]`` and
        ``logits[t]`` predicts ``y_{t+1}`` (the last target is ``<eos>``).
      generate: ``generate(params, src, *, src_length=None, max_len) -> (tokens [max_len],
        length)``: greedy decoding from ``<sos>``; it stops at ``<eos>`` (the ``<eos>`` is
        kept, everything after it is ``<pad>``) and ``length`` counts the tokens before it.
    """

    init: Callable
    apply: Callable
    generate: Callable


def encoder_decoder(
    encoder: Any,
    decoder: Any,
    src_vocab_size: int,
    tgt_vocab_size: int,
    *,
    embed_dim: int,
    sos_id: int,
    eos_id: int,
    pad_id: int,
) -> EncoderDecoder:
    """n inputs, m outputs (transliteration, translation): an encoder-decoder.

    The encoder reads the embedded source; its final carry is the decoder's initial
    carry, so the two cells must have the same carry (same kind and hidden size). The
    decoder reads the previous target token (the true one in training, its own
    prediction in :attr:`EncoderDecoder.generate`) and a readout gives the next token's logits.

    ``sos_id``, ``eos_id`` and ``pad_id`` must be target ids in ``[0, tgt_vocab_size)``;
    ``generate`` needs ``max_len >= 1``. ``src`` and ``tgt_in`` are one example each
    (``[S]`` and ``[M]`` ids; batch with ``jax.vmap``). A traced source id outside the
    vocabulary embeds as NaN; ``generate`` then emits ``-1``, an id no vocabulary decodes,
    rather than the ``argmax`` of NaN logits.

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> model = recurrax.models.encoder_decoder(recurrax.GRU(16), recurrax.GRU(16), 20, 13,
      ...                                  embed_dim=8, sos_id=1, eos_id=2, pad_id=3)
      >>> params = model.init(jax.random.key(0))
      >>> model.apply(params, jnp.array([5, 6, 7]), jnp.array([1, 9, 10])).shape
      (3, 13)
      >>> tokens, n = model.generate(params, jnp.array([5, 6, 7]), max_len=6)
      >>> tokens.shape
      (6,)
    """
    check_positive_int("src_vocab_size", src_vocab_size)
    check_positive_int("tgt_vocab_size", tgt_vocab_size)
    for name, i in (("sos_id", sos_id), ("eos_id", eos_id), ("pad_id", pad_id)):
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < tgt_vocab_size:
            raise ValueError(f"{name} must be a target token id, an int in [0, {tgt_vocab_size}) "
                             f"(tgt_vocab_size={tgt_vocab_size}); got {i!r}.")
    embed, readout = Embedding(embed_dim), Dense(tgt_vocab_size)
    enc_carry = jax.eval_shape(encoder.initial_carry)
    if jax.tree.map(lambda a: a.shape, enc_carry) != jax.tree.map(
        lambda a: a.shape, jax.eval_shape(decoder.initial_carry)
    ):
        raise ValueError(
            "the encoder's final carry starts the decoder: give two cells of the same kind and hidden size."
        )

    def init(key: PRNGKey) -> dict:
        k = jax.random.split(key, 5)
        dec = decoder.init(k[3], embed_dim)
        hidden = jax.tree.leaves(enc_carry)[0].shape[-1]
        return {"src_embed": embed.init(k[0], src_vocab_size), "tgt_embed": embed.init(k[1], tgt_vocab_size),
                "encoder": encoder.init(k[2], embed_dim), "decoder": dec, "readout": readout.init(k[4], hidden)}

    def encode(params, src, src_length):
        src = one_example("src", src, 1, f"[S] source token ids in [0, {src_vocab_size})")
        carry, _ = scan(encoder, params["encoder"], embed.apply(params["src_embed"], src), length=src_length)
        return carry

    def apply(params, src, tgt_in, *, src_length=None, tgt_length=None):
        carry = encode(params, src, src_length)
        tgt_in = one_example("tgt_in", tgt_in, 1, f"[M] target token ids in [0, {tgt_vocab_size})")
        _, ys = scan(decoder, params["decoder"], embed.apply(params["tgt_embed"], tgt_in), carry, length=tgt_length)
        return readout.apply(params["readout"], ys)

    def generate(params, src, *, src_length=None, max_len: int):
        check_positive_int("max_len", max_len)

        def step(state, _):
            carry, prev, done = state
            carry, y = decoder.apply(params["decoder"], carry, embed.apply(params["tgt_embed"], prev))
            logits = readout.apply(params["readout"], y)
            # NaN logits (a traced source id outside the vocabulary) have no argmax; -1 says so
            token = jnp.where(jnp.isnan(logits).any(), -1, jnp.argmax(logits)).astype(jnp.int32)
            token = jnp.where(done, pad_id, token)
            return (carry, token, done | (token == eos_id)), token

        start = (encode(params, src, src_length), jnp.int32(sos_id), jnp.bool_(False))
        _, tokens = lax.scan(step, start, None, length=max_len)
        is_eos = tokens == eos_id
        return tokens, jnp.where(jnp.any(is_eos), jnp.argmax(is_eos), max_len).astype(jnp.int32)

    return EncoderDecoder(init, apply, generate)
