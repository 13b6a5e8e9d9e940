"""Hand-derived BPTT edge cases, the gradient checker, and gradient-flow diagnostics.

manual_bptt = jax.vjp of scan for every cell and option is in the battery (test_cells.py).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrax
import recurrax.plots
from recurrax._core._gradcheck import planted_bug_cell
from tests.helpers import CELLS, leaves_close, scan_trip_counts
from tests.zoo import zoo_params


def _problem(cell, T, I, seed=0):
    kp, kx, kc = jax.random.split(jax.random.key(seed), 3)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), cell.init(kp, I))
    xs = jax.random.normal(kx, (T, I), jnp.float64)
    carry = jax.tree.map(lambda a: jax.random.normal(kc, a.shape, a.dtype), cell.initial_carry((), jnp.float64))
    return params, xs, carry


def _check_against_vjp(cell, T, I, length, reverse, seed=0):
    params, xs, carry = _problem(cell, T, I, seed)
    run = lambda p, x, c: recurrax.scan(cell, p, x, c, length=length, reverse=reverse)
    final, ys = jax.eval_shape(run, params, xs, carry)
    ky, kc = jax.random.split(jax.random.key(seed + 1))
    ys_bar = jax.random.normal(ky, ys.shape, jnp.float64)
    carry_bar = jax.tree.map(lambda a: jax.random.normal(kc, a.shape, a.dtype), final)

    @jax.jit  # one compilation for both gradients keeps the battery fast
    def both(params, xs, carry, ys_bar, carry_bar):
        expected = jax.vjp(run, params, xs, carry)[1]((carry_bar, ys_bar))
        got = recurrax.manual_bptt(cell, params, xs, ys_bar, carry=carry, length=length,
                                   carry_bar=carry_bar, reverse=reverse)
        return got, expected

    got, expected = both(params, xs, carry, ys_bar, carry_bar)
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    leaves_close(got, expected, atol=1e-10)


@pytest.mark.parametrize("make", [
    lambda: recurrax.RNN(1), lambda: recurrax.LSTM(1), lambda: recurrax.GRU(1),
    lambda: recurrax.GRU(1, reset_after=True), lambda: recurrax.Stack(recurrax.LSTM(1), recurrax.RNN(1)),
])
@pytest.mark.parametrize("T,length", [(1, None), (1, 1), (1, 0), (3, 2)])
def test_manual_bptt_tiny_sizes(make, T, length, x64):
    """T=1, H=1 and input size 1: the edge cases of every reshape and sum."""
    _check_against_vjp(make(), T, 1, length, reverse=False)
    _check_against_vjp(make(), T, 1, length, reverse=True)


def test_manual_bptt_without_bias_and_with_relu(x64):
    for cell in [recurrax.GRU(3, reset_after=True, use_bias=False), recurrax.LSTM(3, use_bias=False),
                 recurrax.RNN(3, activation=jax.nn.relu), recurrax.GRU(3, gate_activation=jnp.tanh)]:
        _check_against_vjp(cell, 6, 2, 4, False)


def test_manual_bptt_defaults_and_jit(x64):
    cell = recurrax.LSTM(4)
    params, xs, _ = _problem(cell, 5, 3)
    ys_bar = jnp.ones((5, 4), jnp.float64)
    p_bar, x_bar, c_bar = jax.jit(lambda p, x, yb: recurrax.manual_bptt(cell, p, x, yb))(params, xs, ys_bar)
    _, vjp = jax.vjp(lambda p, x: recurrax.scan(cell, p, x), params, xs)
    zero = recurrax.LSTMCarry(jnp.zeros(4, jnp.float64), jnp.zeros(4, jnp.float64))
    leaves_close((p_bar, x_bar), vjp((zero, ys_bar)), atol=1e-10)
    assert isinstance(c_bar, recurrax.LSTMCarry)


def test_manual_bptt_refuses_what_it_cannot_derive():
    xs, ys_bar = jnp.ones((3, 2)), jnp.ones((3, 4))
    user = recurrax.Cell(lambda k, i: {}, lambda b=(), d=jnp.float32: jnp.zeros((*b, 4), d),
                         lambda p, c, x: (c, c))
    with pytest.raises(
        NotImplementedError,
        match=r"hand-derived backward pass.*needs the cell's step_fwd\(\) method; "
        r"Cell\(.*does not have it.*docs/cells\.md",
    ):
        recurrax.manual_bptt(user, {}, xs, ys_bar)
    gelu = recurrax.GRU(4, activation=jax.nn.gelu)
    with pytest.raises(
        NotImplementedError,
        match=r"GRU\(hidden_size=4, activation=gelu\) has no step_fwd\(\): "
        r"no hand-derived derivative for activation=gelu",
    ):
        recurrax.manual_bptt(gelu, gelu.init(jax.random.key(0), 2), xs, ys_bar)
    inside = recurrax.Stack(recurrax.LSTM(4), user)
    with pytest.raises(
        NotImplementedError,
        match=r"needs the cell's step_fwd\(\) method; Stack\(.*has no step_fwd\(\): layer 1 \(.*\) has no HandBackward",
    ):
        recurrax.manual_bptt(inside, inside.init(jax.random.key(0), 2), xs, ys_bar)
    cell = recurrax.LSTM(4)
    with pytest.raises(
        ValueError, match=r"ys_bar must have the shape of scan's ys, float32\[3, 4\]; got float32\[3, 5\]"
    ):
        recurrax.manual_bptt(cell, cell.init(jax.random.key(0), 2), xs, jnp.ones((3, 5)))


@pytest.mark.parametrize("cell_name", zoo_params(CELLS, {"lstm", "gru_reset_after", "stack"}))
def test_gradcheck_entries_mode_passes_on_correct_cells(cell_name):
    # "directions" mode for the zoo is in the battery (test_cells.py)
    cell = CELLS[cell_name]()
    params = cell.init(jax.random.key(0), 2)
    report = recurrax.gradcheck(cell, params, jax.random.normal(jax.random.key(1), (4, 2)), length=3, mode="entries")
    assert report.passed, str(report)
    checks = {r.check for r in report.rows}
    assert checks == {"autodiff vs finite diff", "manual_bptt vs finite diff", "manual_bptt vs autodiff"}
    leaves = {r.leaf for r in report.rows}
    assert "xs" in leaves and any(l.startswith("params") for l in leaves) and any(l.startswith("carry") for l in leaves)
    assert "all passed" in str(report)


@pytest.mark.parametrize("mode", ["directions", "entries"])
@pytest.mark.parametrize("scale", [1.001, 0.0])
def test_gradcheck_catches_a_planted_wrong_gradient(mode, scale):
    cell = planted_bug_cell(3, scale)
    params = cell.init(jax.random.key(0), 2)
    xs = jax.random.normal(jax.random.key(1), (4, 2))
    report = recurrax.gradcheck(cell, params, xs, mode=mode)
    assert not report.passed
    assert "FAILED" in str(report)
    failed = {r.leaf for r in report.rows if not r.passed}
    assert "params.W" in failed and "xs" in failed
    # manual_bptt cannot derive a custom activation, so only autodiff is checked
    assert {r.check for r in report.rows} == {"autodiff vs finite diff"}
    # the same cell with the honest tanh passes
    assert recurrax.gradcheck(recurrax.RNN(3), params, xs, mode=mode).passed


def test_gradcheck_with_a_user_loss_and_bad_mode():
    cell = recurrax.GRU(3, reset_after=True)
    params = cell.init(jax.random.key(0), 2)
    xs = jnp.linspace(-1, 1, 10).reshape(5, 2)
    report = recurrax.gradcheck(cell, params, xs, loss=lambda c, ys: jnp.sum(ys[-1] ** 3) + jnp.sum(c))
    assert report.passed, str(report)
    with pytest.raises(ValueError, match='mode must be "directions" or "entries"'):
        recurrax.gradcheck(cell, params, xs, mode="fast")
    with pytest.raises(ValueError, match="max_entries"):
        recurrax.gradcheck(cell, params, jnp.ones((200, 2)), mode="entries", max_entries=100)


def test_gradcheck_refuses_a_cell_that_computes_in_bfloat16():
    # It used to print every row FAILED under a float64 title: bfloat16 rounding, not a bug.
    cell = recurrax.RNN(2, dtype=jnp.bfloat16)
    params = cell.init(jax.random.key(0), 2)
    xs = jax.random.normal(jax.random.key(1), (3, 2))
    with pytest.raises(ValueError, match=r"need float64 throughout.*RNN\(hidden_size=2, dtype=bfloat16\).*computes "
                                         r"in bfloat16 inside.*dataclasses.replace\(cell, dtype=None\)"):
        recurrax.gradcheck(cell, params, xs)
    inner = recurrax.Stack(recurrax.RNN(2), recurrax.RNN(2, dtype=jnp.float16))
    with pytest.raises(ValueError, match="computes in float16 inside"):
        recurrax.gradcheck(inner, inner.init(jax.random.key(0), 2), xs)
    # the float64 copy of the same formulas is checked; bfloat16 params are cast to float64
    bf16_params = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    assert recurrax.gradcheck(dataclasses.replace(cell, dtype=None), bf16_params, xs).passed


@pytest.mark.parametrize("option,value,message", [
    ("num_directions", 0, "num_directions must be a positive int; got 0"),
    ("max_entries", -1, "max_entries must be a positive int"),
    ("eps", 0.0, r"eps must be a finite number > 0; got 0.0"),
    ("eps", float("nan"), "eps must be a finite number > 0"),
    ("atol", -1e-7, r"atol must be a finite number >= 0; got -1e-07"),
    ("rtol", float("inf"), "rtol must be a finite number >= 0"),
    ("exact_atol", "1e-10", "exact_atol must be a finite number >= 0"),
    ("exact_rtol", -1.0, "exact_rtol must be a finite number >= 0"),
    ("seed", -1, "seed must be a non-negative int"),
])
def test_gradcheck_rejects_options_that_check_nothing(option, value, message):
    cell = recurrax.RNN(2)
    with pytest.raises(ValueError, match=message):
        recurrax.gradcheck(cell, cell.init(jax.random.key(0), 1), jnp.ones((2, 1)), **{option: value})


def _scaled_orthogonal_rnn(rho, H=16):
    cell = recurrax.RNN(H)
    params = cell.init(jax.random.key(0), 2)
    Q = jax.nn.initializers.orthogonal()(jax.random.key(1), (H, H), jnp.float64)
    return cell, params._replace(W=rho * Q, b=jnp.zeros(H, jnp.float64),
                                 U=params.U.astype(jnp.float64))


@pytest.mark.parametrize("rho", [0.8, 1.25])
def test_rnn_gradient_norm_is_geometric_in_the_lag(rho, x64):
    """At the zero state, ds_t/ds_{t-1} = W^T, so ||dL/ds_t|| = rho ** lag exactly."""
    cell, params = _scaled_orthogonal_rnn(rho)
    T = 30
    norms = np.asarray(recurrax.gradient_norms(cell, params, jnp.zeros((T, 2), jnp.float64)))
    lags = np.arange(T)[::-1]
    np.testing.assert_allclose(norms / norms[-1], rho ** lags, rtol=1e-10)
    assert (norms[:-1] < norms[1:]).all() if rho < 1 else (norms[:-1] > norms[1:]).all()


def test_rnn_gradient_vanishes_with_real_inputs(x64):
    """With inputs, tanh' <= 1 only shrinks it further: ||dL/ds_t|| <= rho ** lag ||dL/ds_T||."""
    rho, T = 0.8, 40
    cell, params = _scaled_orthogonal_rnn(rho)
    xs = jax.random.normal(jax.random.key(2), (T, 2), jnp.float64)
    norms = np.asarray(recurrax.gradient_norms(cell, params, xs))
    lags = np.arange(T)[::-1]
    assert (norms <= norms[-1] * rho ** lags * (1 + 1e-12)).all()
    assert norms[0] / norms[-1] < 1e-3


def test_lstm_with_forget_gates_near_one_keeps_the_gradient(x64):
    """With f_t near 1 (and small weights), dc_t/dc_{t-1} = diag(f_t): the cell-state path is kept."""
    T, H = 60, 16
    small = recurrax.uniform_init(0.1)
    cell = recurrax.LSTM(H, forget_bias=6.0, kernel_init=small, recurrent_init=small)  # sigmoid(6) = 0.9975
    params = jax.tree.map(lambda a: a.astype(jnp.float64), cell.init(jax.random.key(0), 2))
    xs = jax.random.normal(jax.random.key(2), (T, 2), jnp.float64)
    norms = np.asarray(recurrax.gradient_norms(cell, params, xs))[:-1]  # [-1] is dL/dh_T itself
    assert 0.25 < norms.min() / norms.max() <= 1.0  # measured 0.31 over these 60 steps
    # the same lag kills a vanilla RNN's gradient (default init, same sizes)
    rnn = recurrax.RNN(H)
    rnn_params = jax.tree.map(lambda a: a.astype(jnp.float64), rnn.init(jax.random.key(0), 2))
    rnn_norms = np.asarray(recurrax.gradient_norms(rnn, rnn_params, xs))
    assert rnn_norms[0] / rnn_norms[-1] < 1e-6


def test_plot_gradient_flow_writes_an_image(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is the optional plot extra")
    path = recurrax.plots.plot_gradient_flow(
        {"a": np.geomspace(1e-3, 1, 10), "b": np.ones(10)}, str(tmp_path / "flow.png")
    )
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


# -- a length shared by a vmapped batch (docs/design.md, "Known upstream bug") --------------


@pytest.mark.parametrize("backward,reverse", [("autodiff", False), ("manual", True)])
def test_vmap_with_a_shared_int_length_gives_the_summed_per_example_gradient(backward, reverse, x64):
    # The shapes on which jaxlib 0.10.2's XLA:CPU got this gradient 45% wrong through a mask
    # shared by the batch; a static length now runs the valid steps only, with no mask.
    B, T, I, H, n = 4, 7, 3, 5, 4
    cell = recurrax.GRU(H, reset_after=True)
    kp, kx, kr = jax.random.split(jax.random.key(0), 3)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), cell.init(kp, I))
    xs, R = jax.random.normal(kx, (B, T, I), jnp.float64), jax.random.normal(kr, (B, T, H), jnp.float64)
    one = lambda p, x: recurrax.scan(cell, p, x, length=n, reverse=reverse, backward=backward)[1]  # noqa: E731
    grad_vmap = jax.grad(lambda p: jnp.sum(jax.vmap(lambda x: one(p, x))(xs) * R))
    per_example = jax.jit(jax.grad(lambda p, x, r: jnp.sum(one(p, x) * r)))
    summed = per_example(params, xs[0], R[0])
    for e in range(1, B):
        summed = jax.tree.map(jnp.add, summed, per_example(params, xs[e], R[e]))
    leaves_close(grad_vmap(params), summed, atol=1e-10)
    assert set(scan_trip_counts(jax.make_jaxpr(grad_vmap)(params).jaxpr)) == {n}
