"""The battery every built-in cell and stack must pass (DESIGN.md Part 2, Tests)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrax
from recurrax import _reference as ref
from tests.helpers import CELLS, leaves_close, random_xs, to_dtype

T, I = 7, 3


def _setup(name, dtype=jnp.float32, seed=0):
    cell = CELLS[name]()
    kp, kx = jax.random.split(jax.random.key(seed))
    params = to_dtype(cell.init(kp, I), dtype)
    xs = random_xs(kx, T, I).astype(dtype)  # same numbers whatever the dtype
    return cell, params, xs


def test_shapes_and_carry_structure(cell_name):
    cell, params, xs = _setup(cell_name)
    carry, ys = recurrax.scan(cell, params, xs)
    out = recurrax._cells.output_size(cell, params, I)
    assert ys.shape == (T, out)
    expected = cell.initial_carry()
    assert jax.tree.structure(carry) == jax.tree.structure(expected)
    assert jax.tree.map(jnp.shape, carry) == jax.tree.map(jnp.shape, expected)
    # leading batch dimensions in apply
    batch_carry = cell.initial_carry((2, 4))
    c, y = cell.apply(params, batch_carry, jnp.ones((2, 4, I)))
    assert y.shape == (2, 4, out)


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
def test_dtypes(cell_name, dtype, request):
    if dtype == "float64":
        request.getfixturevalue("x64")
    dtype = jnp.dtype(dtype)
    cell, params, xs = _setup(cell_name, dtype)
    carry, ys = recurrax.scan(cell, params, xs, length=5)
    assert ys.dtype == dtype
    assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(carry))
    # against float32 numbers: exact for f32/f64 up to rounding, loose for bfloat16
    cell32, p32, x32 = _setup(cell_name, jnp.float32)
    _, ys32 = recurrax.scan(cell32, p32, x32, length=5)
    tol = 5e-2 if dtype == jnp.bfloat16 else 1e-5
    np.testing.assert_allclose(np.asarray(ys, np.float32), ys32, atol=tol)


def test_compute_dtype_option():
    """dtype= computes in another precision; the carry keeps the dtype it came in with."""
    cell = recurrax.lstm(4, dtype=jnp.bfloat16)
    params = cell.init(jax.random.key(0), 3)
    assert params.U.dtype == jnp.float32
    carry, ys = recurrax.scan(cell, params, jnp.ones((5, 3)))
    assert ys.dtype == jnp.float32 and carry.c.dtype == jnp.float32
    _, ys_full = recurrax.scan(recurrax.lstm(4), params, jnp.ones((5, 3)))
    np.testing.assert_allclose(ys, ys_full, atol=3e-2)
    assert not np.allclose(ys, ys_full, atol=1e-7, rtol=0)  # it really ran in bfloat16


@pytest.mark.parametrize("reverse", [False, True])
def test_jit_equals_eager(cell_name, reverse):
    cell, params, xs = _setup(cell_name)
    eager = recurrax.scan(cell, params, xs, length=5, reverse=reverse)
    jitted = jax.jit(lambda p, x, n: recurrax.scan(cell, p, x, length=n, reverse=reverse))(params, xs, 5)
    leaves_close(eager, jitted, atol=1e-6)


def test_vmap_equals_loop_over_examples(cell_name):
    cell, params, _ = _setup(cell_name)
    B = 4
    xs = jax.random.normal(jax.random.key(1), (B, T, I))
    lengths = jnp.array([7, 0, 3, 5])
    batched = jax.vmap(lambda x, n: recurrax.scan(cell, params, x, length=n))(xs, lengths)
    for b in range(B):
        one = recurrax.scan(cell, params, xs[b], length=int(lengths[b]))
        leaves_close(jax.tree.map(lambda a: a[b], batched), one, atol=1e-6)


def test_vmap_over_parameters_ensemble(cell_name):
    cell, _, xs = _setup(cell_name)
    keys = jax.random.split(jax.random.key(3), 3)
    ensemble = jax.vmap(cell.init, in_axes=(0, None))(keys, I)
    _, ys = jax.vmap(lambda p: recurrax.scan(cell, p, xs))(ensemble)
    for m in range(3):
        _, one = recurrax.scan(cell, cell.init(keys[m], I), xs)
        np.testing.assert_allclose(ys[m], one, atol=1e-6)


@pytest.mark.parametrize(
    "length,reverse,unroll",
    [(None, False, 1), (None, True, 1), (4, False, 1), (4, True, 1), (0, False, 1), (0, True, 1),
     (None, False, 4), (5, True, 4), (T, True, 4)],
)
def test_scan_equals_reference_loop_float64(cell_name, length, reverse, unroll, x64):
    cell, params, xs = _setup(cell_name, jnp.float64)
    kc = jax.random.key(9)
    carry0 = jax.tree.map(lambda a: jax.random.normal(kc, a.shape, a.dtype), cell.initial_carry((), jnp.float64))
    carry, ys = recurrax.scan(cell, params, xs, carry0, length=length, reverse=reverse, unroll=unroll)
    ref_carry, ref_ys = ref.run(ref.step_fn(cell), ref.to_numpy(params), xs, ref.to_numpy(carry0),
                                length=length, reverse=reverse)
    assert ys.dtype == jnp.float64
    np.testing.assert_allclose(ys, ref_ys, atol=1e-12, rtol=0)
    leaves_close(carry, ref_carry, atol=1e-12)
    if length is not None:
        assert (np.asarray(ys[length:]) == 0).all()
        if length == 0:
            leaves_close(carry, carry0, atol=0)


def test_no_retrace_on_second_call(cell_name):
    cell, params, xs = _setup(cell_name)
    traces = []

    @jax.jit
    def run(p, x, n):
        traces.append(1)
        return recurrax.scan(cell, p, x, length=n)

    run(params, xs, 3)
    run(params, xs + 1.0, 6)
    run(jax.tree.map(lambda a: a * 2.0, params), xs, 2)
    assert len(traces) == 1
    # equal cells built twice share the compiled function
    cell2 = CELLS[cell_name]()
    assert cell2 == cell and hash(cell2) == hash(cell)


@pytest.mark.parametrize("reverse", [False, True])
def test_gradients_finite(cell_name, reverse):
    cell, params, xs = _setup(cell_name)
    xs = xs.at[5:].set(jnp.nan)  # padding may hold anything, even NaN

    def loss(p, x):
        carry, ys = recurrax.scan(cell, p, x, length=5, reverse=reverse)
        return jnp.sum(ys**2) + sum(jnp.sum(c) for c in jax.tree.leaves(carry))

    gp, gx = jax.grad(loss, argnums=(0, 1))(params, xs)
    for g in jax.tree.leaves((gp, gx[:5])):
        assert np.isfinite(np.asarray(g)).all()
    assert (np.asarray(gx[5:]) == 0).all()
    assert any(np.abs(np.asarray(g)).sum() > 0 for g in jax.tree.leaves(gp))


def test_user_defined_cell_runs_in_scan_and_stack():
    """Any (init, initial_carry, apply) triple is a cell: scan and stack are generic."""

    def init(key, input_size):
        return {"a": jax.random.normal(key, (input_size, 2))}

    def initial_carry(batch_shape=(), dtype=jnp.float32):
        return jnp.zeros((*batch_shape, 2), dtype)

    def apply(p, h, x):
        h = 0.5 * h + x @ p["a"]
        return h, h

    leaky = recurrax.Cell(init, initial_carry, apply)
    cell = recurrax.stack(leaky, recurrax.gru(3))
    params = cell.init(jax.random.key(0), 4)
    assert params[1].U.shape == (2, 9)
    xs = jnp.ones((5, 4))
    (h1, h2), ys = recurrax.scan(cell, params, xs, length=3)
    h = jnp.zeros(2)
    for t in range(3):
        h = 0.5 * h + xs[t] @ params[0]["a"]
    np.testing.assert_allclose(h1, h, rtol=1e-6)
    assert ys.shape == (5, 3)


def test_initializer_options():
    ortho = recurrax.lstm(6, recurrent_init=jax.nn.initializers.orthogonal())
    p = ortho.init(jax.random.key(0), 3)
    for k in range(4):
        block = np.asarray(p.W[:, 6 * k : 6 * (k + 1)])
        np.testing.assert_allclose(block.T @ block, np.eye(6), atol=1e-5)
    default = recurrax.gru(16).init(jax.random.key(0), 3)
    bound = 1 / np.sqrt(16)
    for leaf in jax.tree.leaves(default):
        assert np.abs(np.asarray(leaf)).max() <= bound
    assert np.abs(np.asarray(default.W)).max() > 0.8 * bound
    nobias = recurrax.gru(4, reset_after=True, use_bias=False).init(jax.random.key(0), 3)
    assert nobias.b is None and nobias.b_hn is None
    _, ys = recurrax.scan(recurrax.gru(4, reset_after=True, use_bias=False), nobias, jnp.zeros((3, 3)))
    assert (np.asarray(ys) == 0).all()  # no bias: zero input and state stay zero
    fb = recurrax.lstm(3, forget_bias=1.0, bias_init=jax.nn.initializers.zeros).init(jax.random.key(0), 2)
    assert np.asarray(fb.b).tolist() == [0.0] * 3 + [1.0] * 3 + [0.0] * 6


def test_stack_equals_cells_chained_by_hand():
    c1, c2 = recurrax.lstm(4), recurrax.gru(3)
    cell = recurrax.stack(c1, c2)
    params = cell.init(jax.random.key(0), I)
    xs = random_xs(jax.random.key(1), T, I)
    (k1, k2), ys = recurrax.scan(cell, params, xs, length=5)
    a1, y1 = recurrax.scan(c1, params[0], xs, length=5)
    a2, y2 = recurrax.scan(c2, params[1], y1, length=5)
    leaves_close((k1, k2, ys), (a1, a2, y2), atol=1e-6)
