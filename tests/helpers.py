"""Helpers shared by the tests: the cell zoo and comparison utilities."""

import jax
import jax.numpy as jnp
import numpy as np

import recurrax

# Every built-in cell form, and stacks of them, by name.
CELLS = {
    "rnn": lambda: recurrax.rnn(5),
    "rnn_relu": lambda: recurrax.rnn(5, activation=jax.nn.relu),
    "lstm": lambda: recurrax.lstm(5),
    "gru": lambda: recurrax.gru(5),
    "gru_reset_after": lambda: recurrax.gru(5, reset_after=True),
    "stack": lambda: recurrax.stack(recurrax.lstm(4), recurrax.gru(5), recurrax.rnn(3)),
    "stack_ra": lambda: recurrax.stack(recurrax.gru(4, reset_after=True), recurrax.lstm(5)),
}


def to_dtype(tree, dtype):
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)


def random_xs(key, T, I, dtype=jnp.float32):
    return jax.random.normal(key, (T, I), dtype)


def leaves_close(a, b, atol, rtol=0.0):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), atol=atol, rtol=rtol)
