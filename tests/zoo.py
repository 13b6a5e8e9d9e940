"""The one cell zoo of the tests: the shipped cells, wrappers, a function-built one and the docs' user cells.

Each entry says how to build the cell and which capabilities it declares (its tags, which
``tests/test_cells.py`` checks against the protocols: presence is truthful), and
:func:`numpy_step` gives its independent NumPy reference step (a plain loop, nothing
shared with the code under test). The user cells are executed from docs/cells.md and
docs/packed.md themselves, so the pages' code is what is tested. Tests select cells by
tag, never by probing. For a stochastic cell (tag ``noise``) the reference step is its
evaluation mode; :func:`numpy_noisy_step` gives the step with drawn noise.
"""

from __future__ import annotations

import functools
import pathlib
import re
import sys
import types
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrax
from tests import reference as ref

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs" / "cells.md"
PACKED = DOCS.parent / "packed.md"


def python_blocks(page: pathlib.Path) -> list:
    return re.findall(r"```python\n(.*?)```", page.read_text(), re.S)


def docs_module() -> types.ModuleType:
    """The IndRNN cell of docs/cells.md (its first Python block) and the stochastic IndRNN of
    docs/packed.md (that page's block that defines it, which builds on the first), as a module."""
    blocks = python_blocks(DOCS)
    module = types.ModuleType("docs_cells")
    sys.modules["docs_cells"] = module  # dataclasses look their module up
    exec(compile(blocks[0], str(DOCS), "exec"), module.__dict__)  # noqa: S102
    module.usage = blocks[1]
    packed = python_blocks(PACKED)
    (cell_block,) = [b for b in packed if "class StochasticIndRNN" in b]
    exec(compile(cell_block, str(PACKED), "exec"), module.__dict__)  # noqa: S102
    module.packed_usage = packed[packed.index(cell_block) + 1]
    return module


DOCS_CELLS = docs_module()


def indrnn_numpy(p, h, x):
    h = np.tanh(x @ p.U + p.b + p.u * h)
    return h, h


def leaky_numpy(p, h, x):
    h = 0.5 * h + np.tanh(x @ p["a"])
    return h, h


def leaky_cell():
    """A cell from three plain functions (no capabilities): ``h = h / 2 + tanh(x A)``."""

    def init(key, input_size):
        return {"a": jax.random.normal(key, (input_size, 4), jnp.float32) / np.float32(np.sqrt(input_size))}

    def initial_carry(batch_shape=(), dtype=jnp.float32):
        return jnp.zeros((*batch_shape, 4), dtype)

    def apply(p, h, x):
        h = 0.5 * h + jnp.tanh(x @ p["a"])
        return h, h

    return recurrax.Cell(init, initial_carry, apply)


_LEAKY = leaky_cell()  # one object: a Cell of the same functions is equal, of new closures not

# A tag per capability protocol (docs/cells.md).
CAPABILITIES = {"split": recurrax.SplitForm, "manual": recurrax.HandBackward,
                "diagonal": recurrax.JacobianDiagonal, "linear": recurrax.LinearRecurrence,
                "noise": recurrax.Stochastic}
GATED = frozenset({"split", "manual", "diagonal"})
NOISY = GATED | {"noise"}


class Entry(NamedTuple):
    """How to build a zoo cell (calling the entry builds it) and the capabilities it declares."""

    make: Callable
    tags: frozenset

    def __call__(self):
        return self.make()


ZOO = {
    "rnn": Entry(lambda: recurrax.RNN(5), GATED),
    "rnn_relu": Entry(lambda: recurrax.RNN(5, activation=jax.nn.relu), GATED),
    "lstm": Entry(lambda: recurrax.LSTM(5), GATED),
    "gru": Entry(lambda: recurrax.GRU(5), GATED),
    "gru_reset_after": Entry(lambda: recurrax.GRU(5, reset_after=True), GATED),
    # The research variants. Each option's code is additive, so the combinations cover the
    # options alone too (proj_size > hidden_size included) at less CI time per option.
    "lstm_peephole": Entry(lambda: recurrax.LSTM(5, peephole=True), GATED),
    "lstm_proj_peephole": Entry(lambda: recurrax.LSTM(4, proj_size=6, peephole=True), GATED),
    "lstm_proj_ln": Entry(lambda: recurrax.LSTM(5, proj_size=3, layer_norm=True), GATED),
    "gru_ln": Entry(lambda: recurrax.GRU(5, layer_norm=True), GATED),
    "gru_reset_after_ln": Entry(lambda: recurrax.GRU(5, reset_after=True, layer_norm=True), GATED),
    "min_gru": Entry(lambda: recurrax.MinGRU(5), frozenset({"split", "linear"})),
    "min_lstm": Entry(lambda: recurrax.MinLSTM(5), frozenset({"split", "linear"})),
    "stack": Entry(lambda: recurrax.Stack(recurrax.LSTM(4), recurrax.RNN(3)), GATED),
    "stack_ra": Entry(lambda: recurrax.Stack(recurrax.GRU(4, reset_after=True), recurrax.GRU(5)), GATED),
    # layer 0 has no split form and no capability: the stack claims none
    "stack_user": Entry(lambda: recurrax.Stack(_LEAKY, DOCS_CELLS.IndRNN(3)), frozenset()),
    # a compute dtype: the hand-derived derivatives run in it, cotangents in the primals' dtypes
    "lstm_bf16": Entry(lambda: recurrax.LSTM(5, dtype=jnp.bfloat16), GATED),
    "function_cell": Entry(lambda: _LEAKY, frozenset()),
    "user_indrnn": Entry(lambda: DOCS_CELLS.IndRNN(5), GATED),
    # stochastic: the wrappers keep their cell's capabilities, and the docs' stochastic cell
    "dropout_lstm": Entry(lambda: recurrax.Dropout(recurrax.LSTM(5), rate=0.3, recurrent_rate=0.4), NOISY),
    "zoneout_gru": Entry(lambda: recurrax.Zoneout(recurrax.GRU(5, reset_after=True), rate=0.3), NOISY),
    "dropout_min_gru": Entry(lambda: recurrax.Dropout(recurrax.MinGRU(5), rate=0.2, recurrent_rate=0.5),
                             frozenset({"split", "linear", "noise"})),
    "zoneout_function_cell": Entry(lambda: recurrax.Zoneout(_LEAKY, rate=0.25), frozenset({"noise"})),
    "stack_noisy": Entry(lambda: recurrax.Stack(recurrax.Zoneout(recurrax.Dropout(recurrax.RNN(4), rate=0.2,
                                                                                   recurrent_rate=0.3), rate=0.2),
                                                DOCS_CELLS.StochasticIndRNN(3, rate=0.4)), NOISY),
    "user_indrnn_noisy": Entry(lambda: DOCS_CELLS.StochasticIndRNN(5, rate=0.3), NOISY),
}


# The zoo cells built on the docs' user cells: those compute in their params' float32 whatever
# the inputs' dtype, so they take no half-precision inputs (under autodiff either).
DOCS_BUILT = frozenset({"stack_user", "user_indrnn", "user_indrnn_noisy", "stack_noisy"})


# What the default (CI) run covers. CORE: every cell class, option, wrapper and capability
# (each option's code is additive, so a combination covers each of its options); the other
# zoo cells repeat combinations of those and run with ``-m slow``, as does everything below.
# FEW: the tests that run whole pipelines per cell (the parity matrix, gradcheck, check_cell
# on the zoo) take one cell per capability set in the default run.
SLOW_ONLY = frozenset({"rnn_relu", "stack_ra", "lstm_peephole", "dropout_min_gru", "zoneout_function_cell",
                       "user_indrnn_noisy"})
FEW = frozenset({"lstm", "min_gru", "user_indrnn", "stack_noisy", "function_cell", "stack_user",
                 "gru_reset_after_ln", "lstm_proj_peephole"})


def zoo_params(names, default=None) -> list:
    """``names`` as pytest parameters: those in ``default`` (``None``: every name outside
    ``SLOW_ONLY``) run by default, the others only with ``-m slow``."""
    runs = (lambda n: n not in SLOW_ONLY) if default is None else (lambda n: n in default)
    return [n if runs(n) else pytest.param(n, marks=pytest.mark.slow) for n in sorted(names)]


def tagged(tag: str) -> list:
    """The names of the zoo cells that declare ``tag``."""
    return sorted(name for name, entry in ZOO.items() if tag in entry.tags)


def numpy_step(name, cell):
    """The independent reference step ``(params, carry, x) -> (carry, y)`` for ``cell``: NumPy,
    one example at a time (a stochastic cell in evaluation mode)."""
    step = numpy_noisy_step(cell, lambda c: None)
    return lambda p, c, x: step(p, c, x, None)


def numpy_noisy_step(cell, noise_of):
    """The NumPy step ``(params, carry, x, t) -> (carry, y)`` of ``cell`` for one example, each
    stochastic cell ``c`` in it with its own drawn noise ``noise_of(c)`` (``None``: evaluation
    mode): a ``Dropout``'s ``(x_mask, carry_mask)``, a ``Zoneout``'s masks ``[T, ...]``, the
    docs' stochastic IndRNN's mask."""
    if isinstance(cell, (recurrax.Dropout, recurrax.Zoneout)):
        inner, noise = numpy_noisy_step(cell.cell, noise_of), noise_of(cell)
        if isinstance(cell, recurrax.Dropout):
            return ref.dropout_step(inner, *(noise or (None, None)))
        return ref.zoneout_step(inner, cell.rate if noise is None else noise)
    if isinstance(cell, recurrax.Stack):
        layers = [numpy_noisy_step(c, noise_of) for c in cell.cells]
        return lambda p, c, x, t: ref.stack_step([functools.partial(f, t=t) for f in layers])(p, c, x)
    if isinstance(cell, DOCS_CELLS.StochasticIndRNN):
        mask = noise_of(cell)
        return lambda p, h, x, t: indrnn_numpy(p, h if mask is None else h * mask, x)
    step = {DOCS_CELLS.IndRNN: indrnn_numpy, recurrax.Cell: leaky_numpy}.get(type(cell)) or ref.step_fn(cell)
    return lambda p, c, x, t: step(p, c, x)


def out_size(cell, input_size=3):
    return recurrax.output_size(cell, cell.init(jax.random.key(0), input_size), input_size)
