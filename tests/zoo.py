"""The one cell zoo of the tests: the shipped cells, a function-built one and the docs' user cell.

Each entry says how to build the cell and which capabilities it declares (its tags, which
``tests/test_cells.py`` checks against the protocols: presence is truthful), and
:func:`numpy_step` gives its independent NumPy reference step (a plain loop, nothing
shared with the code under test). The user cell is executed from docs/cells.md itself,
so the page's code is what is tested. Tests select cells by tag, never by probing.
"""

from __future__ import annotations

import pathlib
import re
import sys
import types
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import recurrax
from tests import reference as ref

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs" / "cells.md"


def docs_module() -> types.ModuleType:
    """The first Python block of docs/cells.md (the IndRNN cell), as a module."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    module = types.ModuleType("docs_cells")
    sys.modules["docs_cells"] = module  # dataclasses look their module up
    exec(compile(blocks[0], str(DOCS), "exec"), module.__dict__)  # noqa: S102
    module.usage = blocks[1]
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
                "diagonal": recurrax.JacobianDiagonal, "linear": recurrax.LinearRecurrence}
GATED = frozenset({"split", "manual", "diagonal"})


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
}


def tagged(tag: str) -> list:
    """The names of the zoo cells that declare ``tag``."""
    return sorted(name for name, entry in ZOO.items() if tag in entry.tags)


def numpy_step(name, cell):
    """The independent reference step for ``cell``: NumPy, one example at a time."""
    if name == "user_indrnn":
        return indrnn_numpy
    if name == "function_cell":
        return leaky_numpy
    if name == "stack_user":
        return ref.stack_step([leaky_numpy, indrnn_numpy])
    return ref.step_fn(cell)


def out_size(cell, input_size=3):
    return recurrax.output_size(cell, cell.init(jax.random.key(0), input_size), input_size)
