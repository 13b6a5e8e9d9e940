"""The lecture's losses: cross-entropy for classification, summed over time for labelling."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from recurrax._apps._checks import check_range, integers
from recurrax._core._base import Array


def cross_entropy(logits: Array, labels: Array) -> Array:
    """``-log softmax(logits)[label]``: the lecture's ``-sum_i y[i] log y_hat[i] = -log y_hat_c``.

    Args:
      logits: ``[..., C]`` unnormalised scores (the readout's ``V s + c``), floating point.
      labels: ``[...]`` integer classes in ``[0, C)``. Concrete labels outside it raise;
        traced ones (under ``jit``/``vmap``) give a NaN loss, never another class's loss.

    Returns:
      ``[...]`` per-example losses (no reduction; average them over a batch).

    Example:
      The lecture's example: true class 0, predicted probabilities ``[0.7, 0.3]``.

      >>> import jax.numpy as jnp, recurrax
      >>> float(recurrax.models.cross_entropy(jnp.log(jnp.array([0.7, 0.3])), jnp.array(0)))  # -log 0.7
      0.356674...
    """
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    if logits.ndim < 1 or logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits [..., C] and labels [...] disagree: {logits.shape} vs {labels.shape}.")
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"logits must be floating point scores; got {logits.dtype}.")
    labels = integers("labels", labels)
    C = logits.shape[-1]
    check_range("labels", labels, 0, C - 1, why=f" (logits has C = {C} classes)")
    in_range = (labels >= 0) & (labels < C)
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, jnp.where(in_range, labels, 0)[..., None], axis=-1)[..., 0]
    return jnp.where(in_range, -picked, jnp.nan)


def sequence_cross_entropy(logits: Array, labels: Array, lengths: Array) -> Array:
    """The lecture's labelling loss: summed over the valid time steps, averaged over samples.

    ``L = (1/m) sum_{b=1..m} sum_{t < length_b} -log y_hat_{b,t}[label_{b,t}]``; padding
    steps (``t >= length_b``) count for nothing, whatever their labels and logits (NaN
    or inf there reach neither the loss nor its gradient). ``m = B`` counts every sample,
    empty ones (``length 0``, loss 0) included: adding an empty sample to a batch of
    ``B - 1`` scales the loss and its gradient by ``(B - 1) / B`` and changes nothing else.

    Args:
      logits: ``[B, T, C]`` floating point, ``B >= 1``.
      labels: ``[B, T]`` integer tags, in ``[0, C)`` at the valid steps (see
        :func:`cross_entropy` for out-of-range ones).
      lengths: ``[B]`` integer valid steps per sample, in ``[0, T]``. Concrete lengths
        outside it raise; traced ones act as if clipped to it, as in :func:`recurrax.scan`.

    Returns:
      A scalar.

    Example:
      >>> import jax.numpy as jnp, recurrax
      >>> logits = jnp.log(jnp.array([[[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]]]))
      >>> loss = recurrax.models.sequence_cross_entropy(logits, jnp.array([[0, 1, 0]]), jnp.array([2]))
      >>> round(float(loss), 6)  # -log 0.7 - log 0.8; the padded third step is ignored
      0.579818
    """
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    if logits.ndim != 3 or labels.shape != logits.shape[:2] or jnp.shape(lengths) != logits.shape[:1]:
        raise ValueError(
            f"expected logits [B, T, C], labels [B, T], lengths [B]; got {logits.shape}, "
            f"{jnp.shape(labels)}, {jnp.shape(lengths)}."
        )
    if logits.shape[0] == 0:
        raise ValueError("logits has no samples (B = 0): the mean over samples is undefined.")
    T = logits.shape[1]
    lengths = integers("lengths", lengths, "integer numbers of valid steps")
    check_range("lengths", lengths, 0, T, why=f" (T = {T} steps)")
    valid = jnp.arange(T)[None, :] < lengths[:, None]
    # the padding's logits are replaced, not just its losses: a NaN there would make the
    # gradient of the discarded branch 0 * NaN = NaN
    logits = jnp.where(valid[..., None], logits, 0.0)
    per_step = jnp.where(valid, cross_entropy(logits, jnp.where(valid, labels, 0)), 0.0)
    return jnp.mean(jnp.sum(per_step, axis=1))
