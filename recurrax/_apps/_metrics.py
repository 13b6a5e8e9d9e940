"""The lecture's evaluation: accuracy, per-class accuracy and the confusion matrix, with tables."""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from recurrax._apps._checks import check_range, integers, same_shape
from recurrax._apps._checks import mask as as_mask
from recurrax._core._base import Array
from recurrax._core._validate import check_positive_int


def _pred_true(pred, true, mask):
    """``(pred, true, mask)`` checked: integer ids of one shape, the mask of that shape too."""
    pred = integers("pred", pred, hint=" jnp.argmax(logits, -1) gives the predicted ids.")
    true = integers("true", true)
    same_shape(pred=pred, true=true, mask=mask)
    return pred, true, as_mask("mask", mask, pred.shape)


def accuracy(pred: Array, true: Array, mask: Array | None = None) -> Array:
    """``(number correctly classified) / (total samples)``, over the entries where ``mask``.

    Args:
      pred, true: integer class ids of one shape (``jnp.argmax(logits, -1)`` for ``pred``).
      mask: ``None`` (every entry counts) or a boolean array of that shape.

    Returns:
      A scalar in ``[0, 1]``; NaN when no entry counts (empty input, or all masked out),
      since the accuracy of nothing is undefined.

    Example:
      >>> import recurrax
      >>> float(recurrax.models.accuracy([1, 0, 1, 0, 1, 0], [1, 0, 0, 0, 1, 1]))
      0.666...
      >>> float(recurrax.models.accuracy([1, 0], [1, 1], mask=[False, False]))
      nan
    """
    pred, true, m = _pred_true(pred, true, mask)
    return jnp.sum((pred == true) & m) / jnp.sum(m)


def confusion_matrix(pred: Array, true: Array, num_classes: int, mask: Array | None = None) -> Array:
    """``cm[i, j]`` = how many entries of true class ``i`` were predicted as ``j`` (rows: truth).

    Works on any shape (e.g. ``[B, T]`` tags with a padding ``mask``), under ``jit`` and ``vmap``.
    Concrete ids outside ``[0, num_classes)`` (where ``mask``) raise. Traced ones cannot:
    then every entry of ``cm`` is ``-1`` (no count is negative), which
    :func:`per_class_accuracy` turns into NaN and :func:`confusion_table` rejects, rather
    than a matrix that silently leaves them out.

    Example:
      >>> import recurrax
      >>> recurrax.models.confusion_matrix([1, 0, 1, 0, 1, 0], [1, 0, 0, 0, 1, 1], 2).tolist()
      [[2, 1], [1, 2]]
    """
    C = check_positive_int("num_classes", num_classes)
    pred, true, m = _pred_true(pred, true, mask)
    for name, a in (("pred", pred), ("true", true)):
        check_range(name, a, 0, C - 1, m, why=f" (num_classes = {C})")
    pred, true, m = pred.reshape(-1), true.reshape(-1), m.reshape(-1)
    onehot = lambda a: (a[:, None] == jnp.arange(C)[None, :]) & m[:, None]
    cm = jnp.einsum("ni,nj->ij", onehot(true).astype(jnp.int32), onehot(pred).astype(jnp.int32))
    outside = m & ((pred < 0) | (pred >= C) | (true < 0) | (true >= C))
    return jnp.where(jnp.any(outside), -1, cm)


def _square(cm, what: str = "cm"):
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"{what} must be a square [C, C] confusion matrix; got shape {cm.shape}.")
    return cm


def per_class_accuracy(cm: Array) -> Array:
    """Accuracy per true class: ``cm[i, i] / sum_j cm[i, j]`` (NaN for a class never seen,
    and for every class of a ``-1`` matrix from :func:`confusion_matrix`).

    Example:
      >>> import recurrax
      >>> recurrax.models.per_class_accuracy([[2, 1], [0, 0]]).tolist()
      [0.666..., nan]
    """
    cm = _square(jnp.asarray(cm))
    total = jnp.sum(cm, axis=1)
    return jnp.where(total > 0, jnp.diag(cm) / jnp.maximum(total, 1), jnp.nan)


def _host_cm(cm, names: Sequence[str]) -> np.ndarray:
    """``cm`` on the host, checked against ``names`` (one per class) and for the ``-1`` marker."""
    cm = _square(np.asarray(cm))
    if cm.shape[0] != len(names):
        raise ValueError(f"names must name the {cm.shape[0]} classes of cm; got {len(names)} names.")
    if (cm < 0).any():
        raise ValueError("cm has negative counts: confusion_matrix marks ids outside [0, num_classes) "
                         "that it could not check (traced) with -1. Fix the ids.")
    return cm


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).rjust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def predictions_table(pred, true, names: Sequence[str], limit: int = 10) -> str:
    """The lecture's table: predicted, ground truth, correct/incorrect (first ``limit`` rows).

    Example:
      >>> import recurrax
      >>> print(recurrax.models.predictions_table([1, 0], [1, 1], ["N", "P"]))
      predicted  ground truth     result
      ---------  ------------  ---------
           1(P)          1(P)    correct
           0(N)          1(P)  incorrect
    """
    pred, true, _ = _pred_true(pred, true, None)
    if pred.ndim != 1:
        raise ValueError(f"pred and true must be [N] (one class id per sample); got shape {pred.shape}.")
    for name, a in (("pred", pred), ("true", true)):
        check_range(name, a, 0, len(names) - 1, why=f" (an index into the {len(names)} names)")
    rows = [
        (f"{p}({names[p]})", f"{t}({names[t]})", "correct" if p == t else "incorrect")
        for p, t in list(zip(np.asarray(pred).tolist(), np.asarray(true).tolist()))[:limit]
    ]
    return _table(["predicted", "ground truth", "result"], rows)


def confusion_table(cm, names: Sequence[str]) -> str:
    """The confusion matrix as text, rows = ground truth, columns = predicted, with per-class accuracy.

    Args:
      cm: ``[C, C]`` counts, as :func:`confusion_matrix` returns them.
      names: the ``C`` class names, in id order.

    Returns:
      A text table, then the overall accuracy.

    Example:
      >>> import recurrax
      >>> cm = recurrax.models.confusion_matrix([1, 0, 1, 0], [1, 0, 0, 0], 2)
      >>> print(recurrax.models.confusion_table(cm, ["neg", "pos"]).splitlines()[-1])
      overall accuracy 0.7500 (3/4)
    """
    cm = _host_cm(cm, names)
    acc = np.asarray(per_class_accuracy(cm))
    rows = [[names[i], *map(str, cm[i]), "-" if np.isnan(acc[i]) else f"{acc[i]:.3f}"] for i in range(len(names))]
    overall = f"{np.trace(cm) / cm.sum():.4f}" if cm.sum() else "-"  # nothing counted: no accuracy
    return (
        _table(["truth \\ predicted", *names, "accuracy"], rows)
        + f"\noverall accuracy {overall} ({np.trace(cm)}/{cm.sum()})"
    )
