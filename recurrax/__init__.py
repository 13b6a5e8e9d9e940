"""recurrax: recurrent cells (RNN, LSTM, GRU and more) as pure JAX functions.

A cell is any object with three pure methods (``init``, ``initial_carry``, ``apply``) and,
optionally, the capabilities of docs/cells.md (split form, hand-derived backward, Jacobian
diagonal) that ``scan``, ``manual_bptt`` and ``parallel_scan`` use whoever wrote the cell.
``scan`` runs a cell over one example ``[T, input_size]`` or a time-major batch
``[T, *batch, input_size]`` with padding and direction handled exactly.

The package has two layers: ``recurrax/_core/`` (cells, scan, layers, gradients,
parallel scan, interop) imports nothing from ``recurrax/_apps/`` (models, losses,
metrics, training, demo, CLI) nor from ``recurrax.data`` / ``recurrax.tasks``.

``recurrax.nnx`` and ``recurrax.equinox`` (imported explicitly, never by ``import
recurrax``) wrap any cell or layer as a flax.nnx or equinox module (docs/flax.md,
docs/equinox.md).
"""

from recurrax._core._base import Cell
from recurrax._core._base import Layer
from recurrax._core._base import Module
from recurrax._core._bptt import manual_bptt
from recurrax._core._cells import GRU
from recurrax._core._cells import LSTM
from recurrax._core._cells import RNN
from recurrax._core._cells import MinGRU
from recurrax._core._cells import MinLSTM
from recurrax._core._cells import MinCellParams
from recurrax._core._cells import min_gru
from recurrax._core._cells import min_lstm
from recurrax._core._stack import Stack
from recurrax._core._cells import CellParams
from recurrax._core._diagnostics import gradient_norms
from recurrax._core._diagnostics import plot_gradient_flow
from recurrax._core._gradcheck import GradcheckReport
from recurrax._core._gradcheck import GradcheckRow
from recurrax._core._gradcheck import gradcheck
from recurrax._core._cells import GRUResetAfterParams
from recurrax._core._cells import LSTMCarry
from recurrax._core._cells import gru
from recurrax._core._cells import lstm
from recurrax._core._cells import rnn
from recurrax._core._stack import stack
from recurrax._core._cells import uniform_init
from recurrax import data
from recurrax import tasks
from recurrax._core._interop import final_state_to_torch
from recurrax._core._interop import from_equinox
from recurrax._core._interop import from_flax
from recurrax._core._interop import from_torch
from recurrax._core._interop import to_equinox
from recurrax._core._interop import to_flax
from recurrax._core._interop import to_torch
from recurrax._core._layers import BidirectionalParams
from recurrax._core._layers import DenseParams
from recurrax._core._layers import EmbeddingParams
from recurrax._core._layers import bidirectional
from recurrax._core._layers import deep
from recurrax._core._layers import dense
from recurrax._core._layers import embedding
from recurrax._core._layers import one_hot
from recurrax._core._layers import unidirectional
from recurrax._apps._losses import cross_entropy
from recurrax._apps._losses import sequence_cross_entropy
from recurrax._apps._metrics import accuracy
from recurrax._apps._metrics import confusion_matrix
from recurrax._apps._metrics import confusion_table
from recurrax._apps._metrics import per_class_accuracy
from recurrax._apps._metrics import plot_confusion_matrix
from recurrax._apps._metrics import predictions_table
from recurrax._apps._models import EncoderDecoder
from recurrax._apps._models import Model
from recurrax._apps._models import encoder_decoder
from recurrax._apps._models import sequence_classifier
from recurrax._apps._models import sequence_tagger
from recurrax._core._parallel import ParallelInfo
from recurrax._core._parallel import parallel_scan
from recurrax._core._scan import scan
from recurrax._apps._train import FitResult
from recurrax._apps._train import fit
from recurrax._apps._train import load_checkpoint
from recurrax._apps._train import make_train_step
from recurrax._apps._train import save_checkpoint

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
    "GRU",
    "gru",
    "GRUResetAfterParams",
    "Layer",
    "load_checkpoint",
    "LSTM",
    "lstm",
    "LSTMCarry",
    "make_train_step",
    "manual_bptt",
    "min_gru",
    "MinGRU",
    "min_lstm",
    "MinLSTM",
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
    "RNN",
    "rnn",
    "save_checkpoint",
    "scan",
    "sequence_classifier",
    "sequence_cross_entropy",
    "sequence_tagger",
    "Stack",
    "stack",
    "tasks",
    "to_equinox",
    "to_flax",
    "to_torch",
    "unidirectional",
    "uniform_init",
]
