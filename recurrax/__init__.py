"""recurrax: recurrent cells (RNN, LSTM, GRU and more) as pure JAX functions.

A cell is any object with three pure methods (``init``, ``initial_carry``, ``apply``) and,
optionally, the capabilities declared by the protocols :class:`SplitForm`,
:class:`HandBackward`, :class:`JacobianDiagonal`, :class:`LinearRecurrence` and
:class:`Stochastic` (docs/cells.md), which ``scan``, ``manual_bptt`` and ``parallel_scan``
use whoever wrote the cell. ``scan`` runs a cell over one example ``[T, input_size]`` or a
time-major batch ``[T, *batch, input_size]`` with padding, direction, packed sequences
(``resets``) and noise (``key``; :class:`Dropout`, :class:`Zoneout`) handled exactly.

``import recurrax`` is the core and needs only jax and numpy. The lecture's applications
are subpackages on top of it, imported explicitly: ``recurrax.models`` (the three problem
types, their losses and metrics), ``recurrax.train`` (Optax training, Orbax checkpoints),
``recurrax.plots``, ``recurrax.data``, ``recurrax.tasks``; ``recurrax.nnx`` and
``recurrax.equinox`` wrap any cell or layer as a flax.nnx or equinox module.
"""

from recurrax._core._base import (
    Cell,
    HandBackward,
    JacobianDiagonal,
    LinearRecurrence,
    SplitForm,
    Stochastic,
    output_size,
)
from recurrax._core._bptt import manual_bptt
from recurrax._core._cells import (
    GRU,
    LSTM,
    RNN,
    CellParams,
    GRUResetAfterParams,
    LSTMCarry,
    MinCellParams,
    MinGRU,
    MinLSTM,
    uniform_init,
)
from recurrax._core._check import CheckReport, check_cell, parity
from recurrax._core._diagnostics import gradient_norms
from recurrax._core._gradcheck import GradcheckReport, GradcheckRow, gradcheck
from recurrax._core._interop import (
    final_state_to_torch,
    from_equinox,
    from_flax,
    from_torch,
    to_equinox,
    to_flax,
    to_torch,
)
from recurrax._core._layers import Bidirectional, Deep, Dense, Embedding, Unidirectional, one_hot
from recurrax._core._noise import Dropout, Zoneout
from recurrax._core._parallel import ParallelInfo, parallel_scan
from recurrax._core._scan import scan
from recurrax._core._stack import Stack

__version__ = "0.2.0"

__all__ = [
    # cells
    "Cell",
    "RNN",
    "LSTM",
    "GRU",
    "MinGRU",
    "MinLSTM",
    "Stack",
    "Dropout",
    "Zoneout",
    "CellParams",
    "GRUResetAfterParams",
    "MinCellParams",
    "LSTMCarry",
    "uniform_init",
    # capabilities
    "SplitForm",
    "HandBackward",
    "JacobianDiagonal",
    "LinearRecurrence",
    "Stochastic",
    # running a sequence, layers
    "scan",
    "Unidirectional",
    "Bidirectional",
    "Deep",
    "Dense",
    "Embedding",
    "one_hot",
    "output_size",
    # gradients and diagnostics
    "manual_bptt",
    "gradcheck",
    "GradcheckReport",
    "check_cell",
    "CheckReport",
    "parity",
    "GradcheckRow",
    "gradient_norms",
    # parallel in time
    "parallel_scan",
    "ParallelInfo",
    # interop
    "from_torch",
    "to_torch",
    "final_state_to_torch",
    "from_flax",
    "to_flax",
    "from_equinox",
    "to_equinox",
]
