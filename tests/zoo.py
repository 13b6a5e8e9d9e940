"""Every cell the battery runs: the shipped ones, a function-built one and the docs' user cell.

Each entry says how to build the cell, its independent NumPy reference step (a plain
loop, nothing shared with the code under test) and how loosely a dtype compares.
The user cell is executed from docs/cells.md itself, so the page's code is what is tested.
"""

from __future__ import annotations

import functools
import pathlib
import re
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np

import recurrax
from recurrax._core._stack import output_size
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

ZOO = {
    "rnn": lambda: recurrax.rnn(5),
    "rnn_relu": lambda: recurrax.rnn(5, activation=jax.nn.relu),
    "lstm": lambda: recurrax.lstm(5),
    "gru": lambda: recurrax.gru(5),
    "gru_reset_after": lambda: recurrax.gru(5, reset_after=True),
    "min_gru": lambda: recurrax.min_gru(5),
    "min_lstm": lambda: recurrax.min_lstm(5),
    "stack": lambda: recurrax.stack(recurrax.lstm(4), recurrax.rnn(3)),
    "stack_ra": lambda: recurrax.stack(recurrax.gru(4, reset_after=True), recurrax.gru(5)),
    "stack_user": lambda: recurrax.stack(_LEAKY, DOCS_CELLS.IndRNN(3)),
    "lstm_bf16": lambda: recurrax.lstm(5, dtype=jnp.bfloat16),
    "function_cell": lambda: _LEAKY,
    "user_indrnn": lambda: DOCS_CELLS.IndRNN(5),
}


def numpy_step(name, cell):
    """The independent reference step for ``cell``: NumPy, one example at a time."""
    if name == "user_indrnn":
        return indrnn_numpy
    if name == "function_cell":
        return leaky_numpy
    if name == "stack_user":
        return ref.stack_step([leaky_numpy, indrnn_numpy])
    return ref.step_fn(cell)


def has(cell, name: str) -> bool:
    return callable(getattr(cell, name, None))


@functools.lru_cache(maxsize=None)
def manual_supported(cell) -> bool:
    """Whether the cell has the hand backward AND accepts its configuration (traced, not run)."""
    if not all(has(cell, m) for m in ("step_fwd", "step_bwd", "step_bwd_params")):
        return False
    f32 = jnp.float32
    try:
        jax.eval_shape(lambda p: recurrax.manual_bptt(cell, p, jnp.ones((2, 3), f32), jnp.zeros((2, out_size(cell)), f32)),
                       cell.init(jax.random.key(0), 3))
    except NotImplementedError:
        return False
    return True


def out_size(cell, input_size=3):
    return output_size(cell, cell.init(jax.random.key(0), input_size), input_size)
