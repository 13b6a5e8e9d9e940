"""recurrax: recurrent cells (RNN, LSTM, GRU) as pure JAX functions.

A cell is three pure functions (``init``, ``initial_carry``, ``apply``); ``scan`` runs it
over one time-major example with padding and direction handled exactly; ``jax.vmap``
batches everything. See README.md for the tour and the conventions.
"""

from recurrax._base import Cell
from recurrax._base import Layer
from recurrax._base import Module
from recurrax._bptt import manual_bptt
from recurrax._cells import CellParams
from recurrax._diagnostics import gradient_norms
from recurrax._diagnostics import plot_gradient_flow
from recurrax._gradcheck import GradcheckReport
from recurrax._gradcheck import GradcheckRow
from recurrax._gradcheck import gradcheck
from recurrax._cells import GRUResetAfterParams
from recurrax._cells import LSTMCarry
from recurrax._cells import gru
from recurrax._cells import lstm
from recurrax._cells import rnn
from recurrax._cells import stack
from recurrax._cells import uniform_init
from recurrax._layers import BidirectionalParams
from recurrax._layers import DenseParams
from recurrax._layers import EmbeddingParams
from recurrax._layers import bidirectional
from recurrax._layers import deep
from recurrax._layers import dense
from recurrax._layers import embedding
from recurrax._layers import one_hot
from recurrax._layers import unidirectional
from recurrax._scan import scan

__version__ = "0.1.0"

__all__ = [
    "BidirectionalParams",
    "Cell",
    "CellParams",
    "DenseParams",
    "EmbeddingParams",
    "GRUResetAfterParams",
    "GradcheckReport",
    "GradcheckRow",
    "LSTMCarry",
    "Layer",
    "Module",
    "bidirectional",
    "deep",
    "dense",
    "embedding",
    "gradcheck",
    "gradient_norms",
    "gru",
    "lstm",
    "manual_bptt",
    "one_hot",
    "plot_gradient_flow",
    "rnn",
    "scan",
    "stack",
    "uniform_init",
    "unidirectional",
]
