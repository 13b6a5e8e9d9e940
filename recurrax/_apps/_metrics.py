"""The lecture's evaluation: accuracy, per-class accuracy and the confusion matrix, with tables."""

from __future__ import annotations

from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np

from recurrax._core._base import Array


def _mask(pred, mask):
    return jnp.ones(jnp.shape(pred), bool) if mask is None else jnp.asarray(mask, bool)


def accuracy(pred: Array, true: Array, mask: Optional[Array] = None) -> Array:
    """``(number correctly classified) / (total samples)``, over the entries where ``mask``.

    Example:
      >>> import recurrax
      >>> float(recurrax.accuracy([1, 0, 1, 0, 1, 0], [1, 0, 0, 0, 1, 1]))
      0.666...
    """
    pred, true = jnp.asarray(pred), jnp.asarray(true)
    m = _mask(pred, mask)
    return jnp.sum((pred == true) & m) / jnp.maximum(jnp.sum(m), 1)


def confusion_matrix(pred: Array, true: Array, num_classes: int, mask: Optional[Array] = None) -> Array:
    """``cm[i, j]`` = how many entries of true class ``i`` were predicted as ``j`` (rows: truth).

    Works on any shape (e.g. ``[B, T]`` tags with a padding ``mask``), under ``jit`` and ``vmap``.

    Example:
      >>> import recurrax
      >>> recurrax.confusion_matrix([1, 0, 1, 0, 1, 0], [1, 0, 0, 0, 1, 1], 2).tolist()
      [[2, 1], [1, 2]]
    """
    pred, true = jnp.asarray(pred).reshape(-1), jnp.asarray(true).reshape(-1)
    m = _mask(pred, mask).reshape(-1)
    onehot = lambda a: (a[:, None] == jnp.arange(num_classes)[None, :]) & m[:, None]
    return jnp.einsum("ni,nj->ij", onehot(true).astype(jnp.int32), onehot(pred).astype(jnp.int32))


def per_class_accuracy(cm: Array) -> Array:
    """Accuracy per true class: ``cm[i, i] / sum_j cm[i, j]`` (NaN for a class never seen)."""
    cm = jnp.asarray(cm)
    total = jnp.sum(cm, axis=1)
    return jnp.where(total > 0, jnp.diag(cm) / jnp.maximum(total, 1), jnp.nan)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).rjust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def predictions_table(pred, true, names: Sequence[str], limit: int = 10) -> str:
    """The lecture's table: predicted, ground truth, correct/incorrect (first ``limit`` rows).

    Example:
      >>> import recurrax
      >>> print(recurrax.predictions_table([1, 0], [1, 1], ["N", "P"]))
      predicted  ground truth     result
      ---------  ------------  ---------
           1(P)          1(P)    correct
           0(N)          1(P)  incorrect
    """
    rows = [
        (f"{p}({names[p]})", f"{t}({names[t]})", "correct" if p == t else "incorrect")
        for p, t in list(zip(np.asarray(pred).tolist(), np.asarray(true).tolist()))[:limit]
    ]
    return _table(["predicted", "ground truth", "result"], rows)


def confusion_table(cm, names: Sequence[str]) -> str:
    """The confusion matrix as text, rows = ground truth, columns = predicted, with per-class accuracy."""
    cm = np.asarray(cm)
    acc = np.asarray(per_class_accuracy(cm))
    rows = [[names[i], *map(str, cm[i]), "-" if np.isnan(acc[i]) else f"{acc[i]:.3f}"] for i in range(len(names))]
    overall = np.trace(cm) / max(cm.sum(), 1)
    return _table(["truth \\ predicted", *names, "accuracy"], rows) + f"\noverall accuracy {overall:.4f} ({np.trace(cm)}/{cm.sum()})"


def plot_confusion_matrix(cm, names: Sequence[str], path: str, *, title: str = "Confusion matrix") -> str:
    """Save the confusion matrix as an image (needs the ``plot`` extra: matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError('plot_confusion_matrix needs matplotlib: pip install "recurrax[plot]"') from e
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * len(names), 1.0 + 0.45 * len(names)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if v > cm.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
