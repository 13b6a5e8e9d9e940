"""The lecture's losses: cross-entropy for classification, summed over time for labelling."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from recurrax._core._base import Array


def cross_entropy(logits: Array, labels: Array) -> Array:
    """``-log softmax(logits)[label]``: the lecture's ``-sum_i y[i] log y_hat[i] = -log y_hat_c``.

    Args:
      logits: ``[..., C]`` unnormalised scores (the readout's ``V s + c``).
      labels: ``[...]`` integer classes.

    Returns:
      ``[...]`` per-example losses (no reduction; average them over a batch).

    Example:
      The lecture's example: true class 0, predicted probabilities ``[0.7, 0.3]``.

      >>> import jax.numpy as jnp, recurrax
      >>> float(recurrax.cross_entropy(jnp.log(jnp.array([0.7, 0.3])), jnp.array(0)))  # -log 0.7
      0.356674...
    """
    labels = jnp.asarray(labels)
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits [..., C] and labels [...] disagree: {logits.shape} vs {labels.shape}.")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"labels must be integer class ids; got {labels.dtype}.")
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]


def sequence_cross_entropy(logits: Array, labels: Array, lengths: Array) -> Array:
    """The lecture's labelling loss: summed over the valid time steps, averaged over samples.

    ``L = (1/m) sum_{b=1..m} sum_{t < length_b} -log y_hat_{b,t}[label_{b,t}]``; padding
    steps (``t >= length_b``) count for nothing, whatever their labels and logits.

    Args:
      logits: ``[B, T, C]``.
      labels: ``[B, T]`` integer tags.
      lengths: ``[B]`` valid steps per sample.

    Returns:
      A scalar.

    Example:
      >>> import jax.numpy as jnp, recurrax
      >>> logits = jnp.log(jnp.array([[[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]]]))
      >>> loss = recurrax.sequence_cross_entropy(logits, jnp.array([[0, 1, 0]]), jnp.array([2]))
      >>> round(float(loss), 6)  # -log 0.7 - log 0.8; the padded third step is ignored
      0.579818
    """
    if logits.ndim != 3 or labels.shape != logits.shape[:2] or jnp.shape(lengths) != logits.shape[:1]:
        raise ValueError(
            f"expected logits [B, T, C], labels [B, T], lengths [B]; got {logits.shape}, "
            f"{jnp.shape(labels)}, {jnp.shape(lengths)}."
        )
    valid = jnp.arange(logits.shape[1])[None, :] < jnp.asarray(lengths)[:, None]
    per_step = jnp.where(valid, cross_entropy(logits, jnp.where(valid, labels, 0)), 0.0)
    return jnp.mean(jnp.sum(per_step, axis=1))
