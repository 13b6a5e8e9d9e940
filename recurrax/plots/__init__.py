"""Figures: gradient flow and confusion matrices (the ``plot`` extra: matplotlib).

Drawn on ``matplotlib.figure.Figure`` objects, never through ``pyplot``: no backend is
chosen and no global matplotlib state is changed.
"""

from recurrax._apps._plots import plot_confusion_matrix, plot_gradient_flow

__all__ = ["plot_gradient_flow", "plot_confusion_matrix"]
