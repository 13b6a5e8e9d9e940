"""Fast-path options beyond the battery: memory of ``checkpoint="carry"``, option errors.

The battery (test_cells.py) checks, for every cell, both projection placements, every
checkpoint policy and ``backward="manual"`` against plain references in float64.
"""

import jax
import jax.numpy as jnp
import pytest

import recurrax
from tests.helpers import leaves_close

T, I = 9, 3


@pytest.mark.parametrize("dtype,tol", [(None, 1e-6), (jnp.bfloat16, 2e-2)])
def test_checkpoint_carry_in_the_batch_form_and_under_vmap_equals_default(dtype, tol):
    # "carry" projects each step's input inside the loop instead of before it.
    cell = recurrax.Stack(recurrax.LSTM(6, dtype=dtype), recurrax.GRU(4, reset_after=True))
    params = cell.init(jax.random.key(0), I)
    xs = jax.random.normal(jax.random.key(1), (4, T, I))
    lengths = jnp.array([9, 5, 0, 2])

    def run(p, checkpoint, batch_form):
        if batch_form:
            ys = jnp.swapaxes(
                recurrax.scan(cell, p, jnp.swapaxes(xs, 0, 1), length=lengths, checkpoint=checkpoint)[1], 0, 1
            )
        else:
            _, ys = jax.vmap(lambda x, n: recurrax.scan(cell, p, x, length=n, checkpoint=checkpoint))(xs, lengths)
        return jnp.mean(jnp.sin(ys)), ys

    (_, ys_d), g_d = jax.value_and_grad(run, has_aux=True)(params, "dots", True)
    for batch_form in (False, True):
        (_, ys_c), g_c = jax.value_and_grad(run, has_aux=True)(params, "carry", batch_form)
        leaves_close(ys_c, ys_d, atol=tol)
        leaves_close(g_c, g_d, atol=tol)


@pytest.mark.parametrize("cell_name", ["lstm", "gru_reset_after", "rnn"])
def test_checkpoint_carry_memory_is_within_twice_params_and_carries(cell_name):
    # Issue 5's memory target, from XLA's own buffer assignment (no timing involved).
    B, T_, H = 8, 512, 32
    cell = {"lstm": recurrax.LSTM, "gru_reset_after": lambda h: recurrax.GRU(h, reset_after=True),
            "rnn": recurrax.RNN}[cell_name](H)
    params = cell.init(jax.random.key(0), I)
    xs = jnp.ones((T_, B, I))

    def temp_bytes(checkpoint):
        loss = lambda p, x: jnp.mean(recurrax.scan(cell, p, x, checkpoint=checkpoint)[1])
        compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, xs).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    carries = T_ * sum(l.size * 4 for l in jax.tree.leaves(cell.initial_carry((B,))))
    param_bytes = sum(l.size * 4 for l in jax.tree.leaves(params))
    assert temp_bytes("carry") < 2 * (param_bytes + carries)
    assert temp_bytes("carry") < temp_bytes("all")


def test_backward_option_errors():
    cell = recurrax.GRU(3)
    params = cell.init(jax.random.key(0), I)
    with pytest.raises(ValueError, match='checkpoint must be "dots", "carry", "all" or None'):
        recurrax.scan(cell, params, jnp.ones((T, I)), checkpoint="everything")
    # options that would do nothing together are refused, not ignored
    with pytest.raises(ValueError, match='checkpoint=.dots. does nothing with backward="manual"'):
        recurrax.scan(cell, params, jnp.ones((T, I)), backward="manual", checkpoint="dots")
    with pytest.raises(ValueError, match='checkpoint="carry" projects each step inside the loop'):
        recurrax.scan(cell, params, jnp.ones((T, I)), checkpoint="carry", projection="before")
    with pytest.raises(ValueError, match='backward must be "autodiff" or "manual"'):
        recurrax.scan(cell, params, jnp.ones((T, I)), backward="fast")
    gelu = recurrax.GRU(3, activation=jax.nn.gelu)
    with pytest.raises(ValueError, match='projection must be "before", "in_loop" or None'):
        recurrax.scan(cell, params, jnp.ones((T, I)), projection="after")
    assert not isinstance(gelu, recurrax.HandBackward)
    with pytest.raises(NotImplementedError, match="activation=gelu"):
        recurrax.scan(gelu, params, jnp.ones((T, I)), backward="manual")


def test_default_projection_asks_the_cell_with_the_batch_shape():
    """``projection=None`` uses the cell's ``preferred_projection``: a string, or a method of
    the batch shape (the built-in LSTM projects in the loop from 8 examples on)."""
    placements = []

    class Spy(recurrax.LSTM):
        """An LSTM that records which of its methods scan runs: ``project`` over all steps
        (``"before"``) or the one-step ``apply`` in the loop (``"in_loop"``)."""

        def project(self, params, xs):
            placements.append("before")
            return super().project(params, xs)

        def apply(self, params, carry, x):
            placements.append("in_loop")
            return super().apply(params, carry, x)

    lstm, spy = recurrax.LSTM(3), Spy(3)
    params = lstm.init(jax.random.key(0), I)
    seen = []
    for batch in [(), (7,), (8,), (2, 4)]:
        placements.clear()
        jax.jit(lambda p, xs: recurrax.scan(spy, p, xs))(params, jnp.ones((T, *batch, I)))
        seen.append(placements[0])
    assert seen == ["before", "before", "in_loop", "in_loop"]
    assert [lstm.preferred_projection(b) for b in [(), (7,), (8,), (2, 4)]] == [
        "before",
        "before",
        "in_loop",
        "in_loop",
    ]
    assert recurrax.Stack(lstm, recurrax.RNN(2)).preferred_projection((64,)) == "in_loop"

    class AlwaysInLoop(Spy):
        preferred_projection = "in_loop"  # a plain string works too

    placements.clear()
    jax.jit(lambda p, xs: recurrax.scan(AlwaysInLoop(3), p, xs))(params, jnp.ones((T, I)))
    assert placements[0] == "in_loop"
