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
from recurrax import data
from recurrax import tasks
from recurrax._interop import final_state_to_torch
from recurrax._interop import from_equinox
from recurrax._interop import from_flax
from recurrax._interop import from_torch
from recurrax._interop import to_equinox
from recurrax._interop import to_flax
from recurrax._interop import to_torch
from recurrax._layers import BidirectionalParams
from recurrax._layers import DenseParams
from recurrax._layers import EmbeddingParams
from recurrax._layers import bidirectional
from recurrax._layers import deep
from recurrax._layers import dense
from recurrax._layers import embedding
from recurrax._layers import one_hot
from recurrax._layers import unidirectional
from recurrax._losses import cross_entropy
from recurrax._losses import sequence_cross_entropy
from recurrax._metrics import accuracy
from recurrax._metrics import confusion_matrix
from recurrax._metrics import confusion_table
from recurrax._metrics import per_class_accuracy
from recurrax._metrics import plot_confusion_matrix
from recurrax._metrics import predictions_table
from recurrax._models import EncoderDecoder
from recurrax._models import Model
from recurrax._models import encoder_decoder
from recurrax._models import sequence_classifier
from recurrax._models import sequence_tagger
from recurrax._parallel import MinCellParams
from recurrax._parallel import ParallelInfo
from recurrax._parallel import min_gru
from recurrax._parallel import min_lstm
from recurrax._parallel import parallel_scan
from recurrax._scan import scan
from recurrax._train import FitResult
from recurrax._train import fit
from recurrax._train import load_checkpoint
from recurrax._train import make_train_step
from recurrax._train import save_checkpoint

__version__ = "0.1.0"

__all__ = [
    "accuracy",
    "bidirectional",
    "BidirectionalParams",
    "Cell",
    "CellParams",
    "confusion_matrix",
    "confusion_table",
    "cross_entropy",
    "data",
    "deep",
    "dense",
    "DenseParams",
    "embedding",
    "EmbeddingParams",
    "encoder_decoder",
    "EncoderDecoder",
    "final_state_to_torch",
    "fit",
    "FitResult",
    "from_equinox",
    "from_flax",
    "from_torch",
    "gradcheck",
    "GradcheckReport",
    "GradcheckRow",
    "gradient_norms",
    "gru",
    "GRUResetAfterParams",
    "Layer",
    "load_checkpoint",
    "lstm",
    "LSTMCarry",
    "make_train_step",
    "manual_bptt",
    "min_gru",
    "min_lstm",
    "MinCellParams",
    "Model",
    "Module",
    "one_hot",
    "parallel_scan",
    "ParallelInfo",
    "per_class_accuracy",
    "plot_confusion_matrix",
    "plot_gradient_flow",
    "predictions_table",
    "rnn",
    "save_checkpoint",
    "scan",
    "sequence_classifier",
    "sequence_cross_entropy",
    "sequence_tagger",
    "stack",
    "tasks",
    "to_equinox",
    "to_flax",
    "to_torch",
    "unidirectional",
    "uniform_init",
]
