"""Every fast path of scan equals the plain reference: values and gradients, every cell.

The fast paths: the input projection hoisted out of the loop (time-major under vmap) or
done step by step inside it, for every built-in cell and stack; sigmoid evaluated through
tanh (the LSTM's four gates as one tanh); the ``checkpoint`` policies; ``unroll``; and
``backward="manual"`` (the hand-derived reverse scan as a custom_vjp). The reference is a bare ``lax.scan`` of
``cell.apply`` with the masking written out, differentiated by JAX.
"""

import jax
import jax.numpy as jnp
import pytest
from jax import lax

import recurrax
from recurrax import _scan
from tests.helpers import CELLS, leaves_close

T, I = 9, 3


def plain_scan(cell, params, xs, carry, length, reverse):
    valid = jnp.arange(xs.shape[0]) < length
    xs = jnp.where(valid[:, None], xs, 0)

    def body(c, inputs):
        x, v = inputs
        new, y = cell.apply(params, c, x)
        return jax.tree.map(lambda a, b: jnp.where(v, a, b), new, c), jnp.where(v, y, 0)

    return lax.scan(body, carry, (xs, valid), reverse=reverse)


@pytest.mark.parametrize("options,reverse", [({}, False), ({"unroll": 3, "checkpoint": "carry"}, True),
                                             ({"checkpoint": None}, True), ({"backward": "manual"}, False),
                                             ({"backward": "manual", "unroll": 2}, True)])
@pytest.mark.parametrize("in_loop", [False, True], ids=["projection up front", "projection in the loop"])
def test_fast_path_equals_plain_scan(cell_name, options, reverse, in_loop, x64, monkeypatch):
    # Both placements of the input projection, whatever this backend picks by default.
    monkeypatch.setattr(_scan, "project_in_loop", lambda spec, checkpoint: in_loop or checkpoint == "carry")
    cell = CELLS[cell_name]()
    kp, kx, kc = jax.random.split(jax.random.key(0), 3)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), cell.init(kp, I))
    xs = jax.random.normal(kx, (T, I), jnp.float64)
    carry = jax.tree.map(lambda a: jax.random.normal(kc, a.shape, a.dtype), cell.initial_carry((), jnp.float64))

    def loss(run):
        def f(p, x, c):
            final, ys = run(p, x, c)
            return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(l**2) for l in jax.tree.leaves(final))
        return f

    fast = lambda p, x, c: recurrax.scan(cell, p, x, c, length=6, reverse=reverse, **options)
    slow = lambda p, x, c: plain_scan(cell, p, x, c, 6, reverse)

    @jax.jit
    def both(p, x, c):
        return [(r(p, x, c), jax.grad(loss(r), argnums=(0, 1, 2))(p, x, c)) for r in (fast, slow)]

    (out_f, g_f), (out_s, g_s) = both(params, xs, carry)
    leaves_close(out_f, out_s, atol=1e-12)
    leaves_close(g_f, g_s, atol=1e-10)


def test_manual_backward_under_vmap_and_in_float32():
    cell = recurrax.lstm(6)
    params = cell.init(jax.random.key(0), I)
    xs = jax.random.normal(jax.random.key(1), (4, T, I))
    lengths = jnp.array([9, 5, 0, 2])

    def loss(p, backward):
        _, ys = jax.vmap(lambda x, n: recurrax.scan(cell, p, x, length=n, backward=backward))(xs, lengths)
        return jnp.mean(ys**2)

    leaves_close(jax.grad(loss)(params, "manual"), jax.grad(loss)(params, "autodiff"), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cell_name", ["lstm", "stack"])  # layer 0 an LSTM: values_up_front
def test_up_front_forward_in_loop_derivatives_forward_mode_and_second_order(cell_name, x64, monkeypatch):
    # project_in_loop with values_up_front: values come from the up-front projection,
    # derivatives from the in-loop one (a custom_jvp); forward mode and Hessian-vector
    # products must hold too.
    monkeypatch.setattr(_scan, "project_in_loop", lambda spec, checkpoint: True)
    cell = CELLS[cell_name]()
    params = jax.tree.map(lambda a: a.astype(jnp.float64), cell.init(jax.random.key(0), I))
    xs = jax.random.normal(jax.random.key(1), (T, I), jnp.float64)
    fast = lambda p, x: jnp.sum(jnp.sin(recurrax.scan(cell, p, x, length=7)[1]))
    slow = lambda p, x: jnp.sum(jnp.sin(plain_scan(cell, p, x, cell.initial_carry((), jnp.float64), 7, False)[1]))
    tangent = jax.tree.map(jnp.ones_like, (params, xs))
    leaves_close(jax.jvp(fast, (params, xs), tangent), jax.jvp(slow, (params, xs), tangent), atol=1e-11)
    hvp = lambda f: jax.jvp(lambda p: jax.grad(f)(p, xs), (params,), (tangent[0],))[1]
    leaves_close(hvp(fast), hvp(slow), atol=1e-10)
    leaves_close(jax.grad(fast, argnums=1)(params, xs), jax.grad(slow, argnums=1)(params, xs), atol=1e-11)


@pytest.mark.parametrize("dtype,tol", [(None, 1e-6), (jnp.bfloat16, 2e-2)])
def test_checkpoint_carry_under_vmap_equals_default(dtype, tol):
    # "carry" projects each step's input inside the loop instead of before it.
    cell = recurrax.stack(recurrax.lstm(6, dtype=dtype), recurrax.gru(4, reset_after=True))
    params = cell.init(jax.random.key(0), I)
    xs = jax.random.normal(jax.random.key(1), (4, T, I))
    lengths = jnp.array([9, 5, 0, 2])

    def run(p, checkpoint):
        _, ys = jax.vmap(lambda x, n: recurrax.scan(cell, p, x, length=n, checkpoint=checkpoint))(xs, lengths)
        return jnp.mean(jnp.sin(ys)), ys

    (_, ys_c), g_c = jax.value_and_grad(run, has_aux=True)(params, "carry")
    (_, ys_d), g_d = jax.value_and_grad(run, has_aux=True)(params, "dots")
    leaves_close(ys_c, ys_d, atol=tol)
    leaves_close(g_c, g_d, atol=tol)


@pytest.mark.parametrize("cell_name", ["lstm", "gru_reset_after", "rnn"])
def test_checkpoint_carry_memory_is_within_twice_params_and_carries(cell_name):
    # Issue 5's memory target, from XLA's own buffer assignment (no timing involved).
    B, T_, H = 8, 512, 32
    cell = {"lstm": recurrax.lstm, "gru_reset_after": lambda h: recurrax.gru(h, reset_after=True),
            "rnn": recurrax.rnn}[cell_name](H)
    params = cell.init(jax.random.key(0), I)
    xs = jnp.ones((B, T_, I))

    def temp_bytes(checkpoint):
        loss = lambda p, x: jnp.mean(jax.vmap(lambda x: recurrax.scan(cell, p, x, checkpoint=checkpoint)[1])(x))
        compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, xs).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    carries = T_ * sum(l.size * 4 for l in jax.tree.leaves(cell.initial_carry((B,))))
    param_bytes = sum(l.size * 4 for l in jax.tree.leaves(params))
    assert temp_bytes("carry") < 2 * (param_bytes + carries)
    assert temp_bytes("carry") < temp_bytes(None)


def test_backward_option_errors():
    cell = recurrax.gru(3)
    params = cell.init(jax.random.key(0), I)
    with pytest.raises(ValueError, match='checkpoint must be "dots", "carry" or None'):
        recurrax.scan(cell, params, jnp.ones((T, I)), checkpoint="all")
    with pytest.raises(ValueError, match='backward must be "autodiff" or "manual"'):
        recurrax.scan(cell, params, jnp.ones((T, I)), backward="fast")
    gelu = recurrax.gru(3, activation=jax.nn.gelu)
    with pytest.raises(NotImplementedError, match="activation=gelu"):
        recurrax.scan(gelu, params, jnp.ones((T, I)), backward="manual")
