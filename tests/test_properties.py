"""Property tests (hypothesis) of scan's padding and direction semantics (docs/design.md, scan)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recurrax
from tests.helpers import CELLS, leaves_close

T, I = 9, 3
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@functools.cache
def _compiled(name):
    """One compiled forward+gradient per cell; hypothesis then only varies the data."""
    cell = CELLS[name]()

    def run(params, xs, length, reverse):
        def loss(p, x):
            carry, ys = recurrax.scan(cell, p, x, length=length, reverse=reverse)
            return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(c) for c in jax.tree.leaves(carry)), (carry, ys)

        (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, xs)
        return out, grads

    return cell, cell.init(jax.random.key(0), I), jax.jit(run, static_argnums=3)


finite = st.floats(-5, 5, allow_nan=False, width=32)
anything = st.one_of(st.floats(width=32), st.sampled_from([np.nan, np.inf, -np.inf, 1e30]))


@SETTINGS
@given(
    name=st.sampled_from(sorted(CELLS)),
    length=st.integers(0, T),
    reverse=st.booleans(),
    seed=st.integers(0, 2**16),
    pad=st.lists(anything, min_size=T * I, max_size=T * I),
)
def test_padding_never_changes_valid_outputs_carry_or_gradients(name, length, reverse, seed, pad):
    cell, params, run = _compiled(name)
    xs = jax.random.normal(jax.random.key(seed), (T, I))
    valid = (np.arange(T) < length)[:, None]
    padded = jnp.asarray(np.where(valid, np.asarray(xs), np.asarray(pad, np.float32).reshape(T, I)))
    zero_padded = jnp.asarray(np.where(valid, np.asarray(xs), 0.0))
    (carry_a, ys_a), (gp_a, gx_a) = run(params, padded, length, reverse)
    (carry_b, ys_b), (gp_b, gx_b) = run(params, zero_padded, length, reverse)
    np.testing.assert_array_equal(ys_a[:length], ys_b[:length])
    assert (np.asarray(ys_a[length:]) == 0).all()
    leaves_close(carry_a, carry_b, atol=0)
    leaves_close(gp_a, gp_b, atol=0)
    np.testing.assert_array_equal(gx_a, gx_b)
    # and the same as running only the valid prefix, with no padding at all
    if length:
        carry_c, ys_c = recurrax.scan(cell, params, xs[:length], reverse=reverse)
        np.testing.assert_allclose(ys_a[:length], ys_c, atol=1e-6)
        leaves_close(carry_a, carry_c, atol=1e-6)


@SETTINGS
@given(name=st.sampled_from(sorted(CELLS)), length=st.integers(0, T), seed=st.integers(0, 2**16))
def test_reverse_equals_flipping_the_valid_prefix(name, length, seed):
    cell, params, run = _compiled(name)
    xs = jax.random.normal(jax.random.key(seed), (T, I))
    (carry_r, ys_r), _ = run(params, xs, length, True)
    flipped = jnp.concatenate([xs[:length][::-1], xs[length:]])
    (carry_f, ys_f), _ = run(params, flipped, length, False)
    np.testing.assert_allclose(ys_r[:length], ys_f[:length][::-1], atol=1e-6)
    assert (np.asarray(ys_r[length:]) == 0).all()
    leaves_close(carry_r, carry_f, atol=1e-6)
