"""The figures of the applications (matplotlib, the ``plot`` extra).

Figures are made with ``matplotlib.figure.Figure`` directly, never through ``pyplot``:
no global backend is chosen and no global state is touched, so importing or calling
these leaves a user's own matplotlib set-up as it was.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from recurrax._apps._metrics import _host_cm


def figure(figsize: tuple, caller: str):
    """``(fig, ax)``: a new ``matplotlib.figure.Figure`` (rendered by Agg on ``savefig``)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(f'{caller} needs matplotlib: pip install "recurrax[plot]"') from e
    fig = Figure(figsize=figsize)
    return fig, fig.add_subplot()


def plot_gradient_flow(curves: Mapping[str, Any], path: str, *, title: str = "Gradient flow") -> str:
    """Plot ``||dL/ds_t||`` against the lag ``T - 1 - t`` (log scale) and save it to ``path``.

    Args:
      curves: ``{label: norms}``, each ``norms`` as :func:`recurrax.gradient_norms` returns it.
      path: where to write the image (PNG, PDF, ... by extension).
      title: the figure's title.

    Returns:
      ``path``.

    Raises:
      ValueError: when ``curves`` is empty (it would write an empty figure).
      ImportError: when matplotlib is missing (``pip install "recurrax[plot]"``).

    Example:
      >>> import os, tempfile, jax, jax.numpy as jnp, recurrax, recurrax.plots
      >>> cell = recurrax.LSTM(8)
      >>> params = cell.init(jax.random.key(0), 2)
      >>> norms = recurrax.gradient_norms(cell, params, jnp.ones((20, 2)))
      >>> path = os.path.join(tempfile.mkdtemp(), "flow.png")
      >>> recurrax.plots.plot_gradient_flow({"lstm": norms}, path) == path and os.path.getsize(path) > 0
      True
    """
    if not curves:
        raise ValueError("plot_gradient_flow: curves is empty; pass {label: gradient_norms(...)}.")
    fig, ax = figure((6.5, 4), "plot_gradient_flow")
    for label, norms in curves.items():
        norms = np.asarray(norms)
        ax.semilogy(np.arange(len(norms))[::-1], norms, label=label)
    ax.set_xlabel("lag T - 1 - t (steps back from the loss)")
    ax.set_ylabel("||dL/ds_t||")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_confusion_matrix(cm, names: Sequence[str], path: str, *, title: str = "Confusion matrix") -> str:
    """Save the confusion matrix as an image (needs the ``plot`` extra: matplotlib).

    Args:
      cm: ``[C, C]`` counts, as :func:`recurrax.models.confusion_matrix` returns them.
      names: the ``C`` class names, in id order.
      path: where to write the image (PNG, PDF, ... by extension).
      title: the figure's title.

    Returns:
      ``path``.

    Example:
      >>> import os, tempfile, recurrax.models, recurrax.plots
      >>> cm = recurrax.models.confusion_matrix([1, 0, 1, 0], [1, 0, 0, 0], 2)
      >>> path = recurrax.plots.plot_confusion_matrix(cm, ["neg", "pos"], os.path.join(tempfile.mkdtemp(), "cm.png"))
      >>> os.path.getsize(path) > 0
      True
    """
    cm = _host_cm(cm, names)
    fig, ax = figure((1.2 + 0.45 * len(names), 1.0 + 0.45 * len(names)), "plot_confusion_matrix")
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
    return path
