"""parallel_scan (DEER / quasi-DEER) and the min cells against the sequential recurrax.scan."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrax
from recurrax import MinCellParams, MinGRU, MinLSTM, ParallelInfo, parallel_scan
from recurrax._core._parallel import ELK_DAMPING, _elk_step, _make_linearise, _make_step, _max_abs, _Time
from tests.helpers import leaves_close, random_xs, to_dtype

T, I, H = 60, 3, 5
LENGTH = 37

NONLINEAR = {
    "rnn": lambda: recurrax.RNN(H),
    "lstm": lambda: recurrax.LSTM(H),
    "gru": lambda: recurrax.GRU(H),
    "gru_reset_after": lambda: recurrax.GRU(H, reset_after=True),
}
MIN = {"min_gru": lambda: MinGRU(H), "min_lstm": lambda: MinLSTM(H)}
ALL = {**NONLINEAR, **MIN}
METHODS = ["deer", "quasi-deer"]
ALL_METHODS = ["deer", "quasi-deer", "quasi-deer-block", "elk"]


def setup(name, dtype=jnp.float32, carry_offset=0.0):
    cell = ALL[name]()
    params = to_dtype(cell.init(jax.random.key(0), I), dtype)
    xs = random_xs(jax.random.key(1), T, I, dtype)
    carry = jax.tree.map(lambda c: c + carry_offset, cell.initial_carry((), dtype))
    return cell, params, xs, carry


def generic(cell):
    """The same cell, hidden from parallel_scan's special cases (hand diagonal, min cells)."""
    return recurrax.Cell(cell.init, cell.initial_carry, lambda p, c, x: cell.apply(p, c, x))


def assert_converged(info):
    assert isinstance(info, ParallelInfo)
    assert bool(info.converged) and not bool(info.fell_back), info


# -- values ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", sorted(NONLINEAR))
def test_matches_scan_float32(name, method):
    cell, params, xs, carry = setup(name, carry_offset=0.5)
    for length in (None, LENGTH):
        final, ys, info = parallel_scan(cell, params, xs, carry, method=method, length=length)
        assert_converged(info)
        assert 1 <= int(info.iterations) < T and float(info.residual) <= 1e-6
        leaves_close((final, ys), recurrax.scan(cell, params, xs, carry, length=length), atol=1e-5)


@pytest.mark.parametrize("generic_path", [False, True])
def test_stack_quasi_deer(generic_path):
    # a stack's diagonal is its layers' (step_jacobian_diagonal), or the full Jacobian's
    cell = recurrax.Stack(recurrax.LSTM(4), recurrax.GRU(3))
    cell = generic(cell) if generic_path else cell
    params = cell.init(jax.random.key(0), I)
    xs = random_xs(jax.random.key(1), T, I)
    final, ys, info = parallel_scan(cell, params, xs, method="quasi-deer", length=LENGTH)
    assert_converged(info)
    leaves_close((final, ys), recurrax.scan(cell, params, xs, length=LENGTH), atol=1e-5)


def test_length_zero_and_empty_sequence():
    cell, params, xs, carry = setup("lstm", carry_offset=0.5)
    final, ys, info = parallel_scan(cell, params, xs, carry, length=0)
    leaves_close(final, carry, atol=0)
    assert not bool(jnp.any(ys)) and int(info.iterations) == 0
    final, ys, _ = parallel_scan(cell, params, xs[:0], carry)
    assert ys.shape == (0, H)
    leaves_close(final, carry, atol=0)


# -- gradients ------------------------------------------------------------------------------


def loss(run, params, xs, carry):
    out = run(params, xs, carry)
    final, ys = out[:2]
    return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(c * c) for c in jax.tree.leaves(final)), out


def outputs_and_grads(run, params, xs, carry):
    """``(run's outputs, grads of a loss of them w.r.t. params, xs, carry)``, compiled once."""
    value_and_grad = jax.value_and_grad(functools.partial(loss, run), argnums=(0, 1, 2), has_aux=True)
    (_, out), g = jax.jit(value_and_grad)(params, xs, carry)
    return out, g


# Each cell once; the backward pass does not depend on the method (both use the full
# Jacobians at the solution), and both methods' forward passes are checked above.
@pytest.mark.parametrize(
    "name, method",
    [("rnn", "deer"), ("lstm", "quasi-deer"), ("gru", "deer"), ("gru_reset_after", "quasi-deer"),
     ("min_gru", "deer"), ("min_lstm", "deer")],
)
def test_values_and_gradients_float64(x64, name, method):
    cell, params, xs, carry = setup(name, jnp.float64, carry_offset=0.5)
    par = functools.partial(parallel_scan, cell, method=method, length=LENGTH)
    (final, ys, info), g = outputs_and_grads(par, params, xs, carry)
    expected, g_seq = outputs_and_grads(functools.partial(recurrax.scan, cell, length=LENGTH), params, xs, carry)
    assert_converged(info)
    leaves_close((final, ys), expected, atol=1e-9)
    leaves_close(g, g_seq, atol=1e-9)
    assert not bool(jnp.any(g[1][LENGTH:]))  # padding gets no gradient


def test_gradients_float32():
    cell, params, xs, carry = setup("gru", carry_offset=0.5)
    _, g = outputs_and_grads(functools.partial(parallel_scan, cell), params, xs, carry)
    _, g_seq = outputs_and_grads(functools.partial(recurrax.scan, cell), params, xs, carry)
    # float32 rounding: a few ulp of the largest entries (about 60), summed in another order
    leaves_close(g, g_seq, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("form,method", [("dtype=bfloat16", "deer"), ("bfloat16 params and xs", "quasi-deer")])
def test_bfloat16_converges_in_a_few_iterations(form, method):
    # The default tol used to be float32's 9.5e-7 for a cell computing in bfloat16 inside: T
    # iterations, else a fall-back after max_iters; and 8 eps = 0.0625 for bfloat16 inputs,
    # which let one iteration pass 0.03 away from scan.
    if form == "dtype=bfloat16":
        cell, dtype = recurrax.RNN(H, dtype=jnp.bfloat16), jnp.float32
    else:
        cell, dtype = recurrax.RNN(H, param_dtype=jnp.bfloat16), jnp.bfloat16
    params, xs = cell.init(jax.random.key(0), I), random_xs(jax.random.key(1), T, I, dtype)
    final, ys, info = parallel_scan(cell, params, xs, method=method, length=LENGTH, max_iters=20, fallback=False)
    assert_converged(info)
    assert int(info.iterations) <= 10 and float(info.residual) <= 2**-6 and ys.dtype == dtype
    # about as close as bfloat16's scan is to float32's
    leaves_close((final, ys), recurrax.scan(cell, params, xs, length=LENGTH), atol=0.01)


# -- reverse and resets ---------------------------------------------------------------------


def packed_setup(name):
    """A float64 batch of 2 (lengths T and 15) with an offset initial carry."""
    cell = ALL[name]()
    params = to_dtype(cell.init(jax.random.key(0), I), jnp.float64)
    xs = jax.random.normal(jax.random.key(1), (24, 2, I), jnp.float64)
    carry = jax.tree.map(lambda c: c + 0.3, cell.initial_carry((2,), jnp.float64))
    return cell, params, xs, carry, jnp.array([24, 15])


@pytest.mark.parametrize("name, method", [("lstm", m) for m in ALL_METHODS] + [("gru", "deer"), ("min_lstm", "deer")])
def test_reverse_matches_scan_float64(x64, name, method):
    cell, params, xs, carry, lengths = packed_setup(name)
    xs = xs.at[20:, 1].set(jnp.nan)  # padding of the example of length 15, never read
    par = functools.partial(parallel_scan, cell, method=method, length=lengths, reverse=True)
    (final, ys, info), g = outputs_and_grads(par, params, xs, carry)
    expected, g_seq = outputs_and_grads(functools.partial(recurrax.scan, cell, length=lengths, reverse=True),
                                        params, xs, carry)
    assert bool(info.converged.all()) and not bool(info.fell_back.any())
    leaves_close((final, ys), expected, atol=1e-9)
    leaves_close(g, g_seq, atol=1e-9)
    assert not bool(jnp.any(ys[15:, 1])) and bool(jnp.isfinite(g[1]).all())


def segments(resets, n):
    """``[(start, stop), ...]``: the segments of the first ``n`` steps (a reset or step 0 starts one)."""
    starts = [t for t in range(n) if t == 0 or resets[t]]
    return list(zip(starts, starts[1:] + [n]))


def run_segments(cell, params, xs, carry, lengths, resets, reverse):
    """``(final, ys)`` of each example's segments, each run alone by ``recurrax.scan`` from ``carry``."""
    finals, ys = [], jnp.zeros(xs.shape[:-1] + (H,), xs.dtype)
    for b in range(xs.shape[1]):
        c = jax.tree.map(lambda a: a[b], carry)
        parts = [(lo, hi, recurrax.scan(cell, params, xs[lo:hi, b], c, reverse=reverse))
                 for lo, hi in segments(resets[:, b], int(np.asarray(lengths)[b]))]
        for lo, hi, (_, y) in parts:
            ys = ys.at[lo:hi, b].set(y)
        # forwards the last segment's final carry; backwards the first's (it ends at step 0)
        finals.append(parts[0 if reverse else -1][2][0] if parts else c)
    return jax.tree.map(lambda *a: jnp.stack(a), *finals), ys


RESETS = np.zeros((24, 2), bool)
RESETS[[0, 5, 6, 13, 23], 0] = True  # at step 0, a length-1 segment (5), the last step alone (23)
RESETS[[3, 14, 17, 20], 1] = True  # the last valid step alone (14); 17, 20 are padding (length 15)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name, method", [("lstm", m) for m in ALL_METHODS] + [("min_gru", "deer")])
def test_resets_equal_each_segment_alone_float64(x64, name, method, reverse):
    cell, params, xs, carry, lengths = packed_setup(name)
    final, ys, info = parallel_scan(cell, params, xs, carry, method=method, length=lengths, reverse=reverse,
                                    resets=jnp.asarray(RESETS))
    assert bool(info.converged.all()) and not bool(info.fell_back.any())
    leaves_close((final, ys), run_segments(cell, params, xs, carry, lengths, RESETS, reverse), atol=1e-9)


@pytest.mark.parametrize("reverse", [False, True])
def test_resets_gradients_equal_each_segment_alone_float64(x64, reverse):
    cell, params, xs, carry, lengths = packed_setup("gru")
    resets = jnp.asarray(RESETS)
    par = functools.partial(parallel_scan, cell, length=lengths, resets=resets, reverse=reverse)
    (_, _, info), g = outputs_and_grads(par, params, xs, carry)
    seg = lambda p, x, c: run_segments(cell, p, x, c, lengths, RESETS, reverse)  # noqa: E731
    _, g_seq = outputs_and_grads(seg, params, xs, carry)
    assert bool(info.converged.all())
    leaves_close(g, g_seq, atol=1e-9)


# -- the robust methods and the Lyapunov exponent ----------------------------------------------


def rnn_with(recurrent, H=4):
    """An RNN whose recurrent matrix is ``recurrent(key, (H, H))``."""
    return recurrax.RNN(H, recurrent_init=lambda key, shape, dtype: recurrent(key, shape).astype(dtype))


ORTHOGONAL_3 = rnn_with(lambda key, shape: 3.0 * jax.nn.initializers.orthogonal()(key, shape))  # chaotic
NEAR_3I = rnn_with(lambda key, shape: 3.0 * jnp.eye(shape[0]) + 0.1 * jax.random.normal(key, shape))  # saturates


def test_elk_converges_where_deer_overflows_and_falls_back_truthfully_on_chaos():
    xs = random_xs(jax.random.key(1), 128, I)
    # On the saturating RNN ELK must converge; on the orthogonal one it converges or, within
    # 128 iterations, falls back (which one depends on the CPU's float32 rounding): both truthful.
    for cell, must_converge in ((NEAR_3I, True), (ORTHOGONAL_3, False)):
        params = cell.init(jax.random.key(0), I)
        expected = recurrax.scan(cell, params, xs)
        _, _, deer = parallel_scan(cell, params, xs, max_iters=128)
        assert not bool(deer.converged) and bool(deer.fell_back) and int(deer.iterations) == 1  # NaN at once
        final, ys, info = parallel_scan(cell, params, xs, method="elk", max_iters=128)
        converged = bool(info.converged)
        assert converged or not must_converge, info
        assert bool(info.fell_back) != converged, info
        assert float(info.residual) <= 1e-6
        # a converged solve meets the residual test; the fallback is scan, compiled in another
        # program (float32 rounding apart). On the orthogonal RNN either's rounding grows along
        # the trajectory.
        leaves_close((final, ys), expected, atol=1e-5 if must_converge else 1e-4)


def test_block_quasi_deer_needs_no_more_iterations_than_diagonal_on_lstm():
    cell = recurrax.LSTM(8)
    params, xs = cell.init(jax.random.key(0), I), random_xs(jax.random.key(1), 128, I)
    expected = recurrax.scan(cell, params, xs)
    iterations = {}
    for method in ("quasi-deer", "quasi-deer-block"):
        final, ys, info = parallel_scan(cell, params, xs, method=method)
        assert_converged(info)
        leaves_close((final, ys), expected, atol=1e-5)
        iterations[method] = int(info.iterations)
    assert iterations["quasi-deer-block"] <= iterations["quasi-deer"], iterations


def test_block_jacobian_is_the_h_c_pair_of_each_unit(x64):
    cell = recurrax.LSTM(3)
    params = to_dtype(cell.init(jax.random.key(0), I), jnp.float64)
    s = jax.random.normal(jax.random.key(2), (6,), jnp.float64)
    x = jax.random.normal(jax.random.key(3), (I,), jnp.float64)
    _, unravel = jax.flatten_util.ravel_pytree(cell.initial_carry((), jnp.float64))
    step = _make_step(cell, unravel)
    _, blocks = _make_linearise(cell, unravel, step, 2, False)(params, s, x, True)
    J = np.asarray(jax.jacfwd(lambda s: step(params, s, x, True))(s))  # rows/columns: h_0..h_2, c_0..c_2
    for i in range(3):
        np.testing.assert_allclose(blocks[i], J[np.ix_([i, 3 + i], [i, 3 + i])], atol=1e-15)


@pytest.mark.parametrize("form", ["dense", "diagonal", "blocks"])
def test_elk_step_is_the_kalman_filter_of_the_damped_problem(x64, form):
    """Step t of ELK is x_t of the least-squares problem cut off at t: rows x_u - A_u x_{u-1} - b_u
    and sqrt(damping) (x_u - s_u), u <= t (x_0 = 0, A_1 = 0), by numpy's lstsq."""
    T, D = 6, 4
    rng = np.random.default_rng(0)
    A = 2 * rng.normal(size={"dense": (T, D, D), "diagonal": (T, D), "blocks": (T, 2, 2, 2)}[form])
    A[0] = 0
    b, S = rng.normal(size=(T, D)), rng.normal(size=(T, D))
    to_layout = (lambda v: v.reshape(T, 2, 2)) if form == "blocks" else (lambda v: v)
    X = np.asarray(_elk_step(jnp.asarray(A), to_layout(jnp.asarray(b)), to_layout(jnp.asarray(S)), _Time()))
    zero = np.zeros((2, 2))
    if form == "dense":
        dense = A
    elif form == "diagonal":
        dense = np.stack([np.diag(a) for a in A])
    else:
        dense = np.stack([np.block([[a[0], zero], [zero, a[1]]]) for a in A])
    for t in range(1, T + 1):
        rows, rhs = [], []
        for u in range(t):
            residual, damping = np.zeros((D, t * D)), np.zeros((D, t * D))
            residual[:, u * D:(u + 1) * D] = np.eye(D)
            if u > 0:
                residual[:, (u - 1) * D:u * D] = -dense[u]
            damping[:, u * D:(u + 1) * D] = np.sqrt(ELK_DAMPING) * np.eye(D)
            rows += [residual, damping]
            rhs += [b[u], np.sqrt(ELK_DAMPING) * S[u]]
        x = np.linalg.lstsq(np.concatenate(rows), np.concatenate(rhs), rcond=None)[0]
        np.testing.assert_allclose(X.reshape(T, D)[t - 1], x[-D:], atol=1e-9)


def log_growth_of_scan(cell, params, xs, carry, length, resets, diagonal):
    """``log ||J_T ... J_1||_F / n`` (or, diagonal, ``max_i sum_t log |J_t[i, i]| / n``) over the n
    valid steps that start no segment, with the Jacobians of scan's trajectory, in numpy."""
    s0, unravel = jax.flatten_util.ravel_pytree(carry)
    f = lambda s, x: jax.flatten_util.ravel_pytree(cell.apply(params, unravel(s), x)[0])[0]  # noqa: E731
    s, product, logs, n = s0, np.eye(s0.size), np.zeros(s0.size), 0
    for t in range(length):
        s = s0 if resets[t] else s
        if t > 0 and not resets[t]:
            J = np.asarray(jax.jacfwd(f)(s, xs[t]))
            product, logs, n = J @ product, logs + np.log(np.abs(np.diag(J))), n + 1
        s = f(s, xs[t])
    return (np.max(logs) if diagonal else np.log(np.linalg.norm(product))) / n


@pytest.mark.parametrize("name, method", [("gru", "deer"), ("lstm", "quasi-deer"), ("min_gru", "deer")])
def test_lyapunov_is_the_log_growth_of_the_step_jacobians(x64, name, method):
    cell, params, xs, carry, _ = packed_setup(name)
    xs, carry = xs[:, 0], jax.tree.map(lambda c: c[0], carry)
    resets = np.zeros(24, bool)
    resets[[5, 9]] = True
    _, _, info = parallel_scan(cell, params, xs, carry, method=method, length=20, resets=jnp.asarray(resets))
    expected = log_growth_of_scan(cell, params, xs, carry, 20, resets, method == "quasi-deer" or name == "min_gru")
    np.testing.assert_allclose(float(info.lyapunov), expected, atol=1e-9)
    assert float(info.lyapunov) < 0


# -- non-convergence and the fallback ---------------------------------------------------------


def test_max_iters_one_falls_back_to_scan():
    cell, params, xs, carry = setup("gru")
    expected = recurrax.scan(cell, params, xs, length=LENGTH)
    final, ys, info = parallel_scan(cell, params, xs, length=LENGTH, max_iters=1)
    assert int(info.iterations) == 1 and not bool(info.converged) and bool(info.fell_back)
    assert float(info.residual) <= 1e-6  # the residual of what is returned: scan's
    leaves_close((final, ys), expected, atol=1e-6)
    # without the fallback the unconverged iterate comes back, and says so
    final, ys, info = parallel_scan(cell, params, xs, length=LENGTH, max_iters=1, fallback=False)
    assert not bool(info.converged) and not bool(info.fell_back) and float(info.residual) > 1e-3
    # and gradients through the fallback are still the sequential scan's
    _, g = outputs_and_grads(functools.partial(parallel_scan, cell, length=LENGTH, max_iters=1), params, xs, carry)
    _, g_seq = outputs_and_grads(functools.partial(recurrax.scan, cell, length=LENGTH), params, xs, carry)
    leaves_close(g, g_seq, atol=1e-5, rtol=1e-6)  # float32 sums of up to ~40


def test_unstable_linearisation_nan_iterate_falls_back():
    # W ~ 3 I: around the initial guess s = 0 the linearised recurrence multiplies by about
    # 3 per step and overflows, while the RNN itself settles into saturated, stable states.
    def near_3i(key, shape, dtype):
        return 3.0 * jnp.eye(shape[0], dtype=dtype) + 0.1 * jax.random.normal(key, shape, dtype)

    cell = recurrax.RNN(8, recurrent_init=near_3i)
    params = cell.init(jax.random.key(0), I)
    xs = random_xs(jax.random.key(1), 2000, I)
    final, ys, info = parallel_scan(cell, params, xs)
    assert not bool(info.converged) and bool(info.fell_back) and int(info.iterations) < 5
    leaves_close((final, ys), recurrax.scan(cell, params, xs), atol=1e-6)


def test_nan_is_never_small():
    # XLA:CPU's vectorised max reduction returned -inf for a large array holding NaNs,
    # which made a NaN trajectory pass the convergence test.
    x = jnp.full((10_000, 4), jnp.nan).at[5].set(1.0)
    assert float(jax.jit(_max_abs)(x)) == np.inf
    assert float(jax.jit(_max_abs)(jnp.array([-3.0, 2.0]))) == 3.0


# -- the min cells --------------------------------------------------------------------------


def reference_min(name, params, xs, h):
    """The paper's equations, step by step in numpy."""
    U, b = np.asarray(params.U, np.float64), np.asarray(params.b, np.float64)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    ys = []
    for x in np.asarray(xs, np.float64):
        gates = np.split(x @ U + b, 2 if name == "min_gru" else 3)
        if name == "min_gru":
            z, h_tilde = sig(gates[0]), gates[1]
            h = (1 - z) * h + z * h_tilde
        else:
            f, i, h_tilde = sig(gates[0]), sig(gates[1]), gates[2]
            h = f / (f + i) * h + i / (f + i) * h_tilde
        ys.append(h)
    return np.stack(ys)


@pytest.mark.parametrize("name", sorted(MIN))
def test_min_cells(name):
    cell, params, xs, carry = setup(name, carry_offset=0.5)
    k = 2 if name == "min_gru" else 3
    assert isinstance(params, MinCellParams) and params.U.shape == (I, k * H) and params.b.shape == (k * H,)
    assert float(jnp.max(jnp.abs(params.U))) <= 1 / np.sqrt(H)
    # the equations, under recurrax.scan, and with leading batch dimensions in apply
    _, ys = recurrax.scan(cell, params, xs, carry)
    np.testing.assert_allclose(ys, reference_min(name, params, xs, np.asarray(carry)), atol=1e-5)
    h, y = cell.apply(params, jnp.zeros((2, 4, H)), jnp.ones((2, 4, I)))
    assert h.shape == y.shape == (2, 4, H)
    # exact in one associative pass, whatever the method
    for length in (None, LENGTH):
        expected = recurrax.scan(cell, params, xs, carry, length=length)
        for method in METHODS:
            final, ys, info = parallel_scan(cell, params, xs, carry, method=method, length=length)
            assert_converged(info)
            assert int(info.iterations) == 1
            leaves_close((final, ys), expected, atol=1e-6)
    # the general Newton path: the Jacobian is diagonal, so one iteration is exact too
    for method in METHODS:
        final, ys, info = parallel_scan(generic(cell), params, xs, carry, method=method, length=LENGTH)
        assert_converged(info)
        assert int(info.iterations) == 1
        leaves_close((final, ys), recurrax.scan(cell, params, xs, carry, length=LENGTH), atol=1e-6)


def test_min_cell_long_sequence_stays_finite():
    cell = MinGRU(4)
    params = cell.init(jax.random.key(0), 2)
    xs = random_xs(jax.random.key(1), 20_000, 2)
    _, ys, _ = parallel_scan(cell, params, xs)
    np.testing.assert_allclose(ys, recurrax.scan(cell, params, xs)[1], atol=1e-5)


# -- jit and vmap ---------------------------------------------------------------------------


def test_jit_and_vmap():
    cell, params, xs, _ = setup("lstm")
    run = jax.jit(parallel_scan, static_argnames=("cell", "method", "max_iters", "fallback"))
    final, ys, info = run(cell, params, xs, method="quasi-deer", length=jnp.int32(LENGTH))
    assert_converged(info)
    leaves_close((final, ys), recurrax.scan(cell, params, xs, length=LENGTH), atol=1e-5)

    batch = jnp.stack([xs, xs[::-1], 0.5 * xs])
    lengths = jnp.array([T, LENGTH, 0])

    @jax.jit
    def batched(params, batch, lengths):
        return jax.vmap(lambda x, n: parallel_scan(cell, params, x, length=n, fallback=False))(batch, lengths)

    final, ys, info = batched(params, batch, lengths)
    assert info.iterations.shape == (3,) and bool(info.converged.all())
    for i in range(3):
        leaves_close(
            jax.tree.map(lambda a: a[i], (final, ys)),
            recurrax.scan(cell, params, batch[i], length=int(lengths[i])),
            atol=1e-5,
        )
    # gradients of the batched, jitted parallel scan
    g = jax.jit(jax.grad(lambda p: jnp.sum(batched(p, batch, lengths)[1])))(params)
    g_seq = jax.grad(lambda p: jnp.sum(jax.vmap(lambda x, n: recurrax.scan(cell, p, x, length=n)[1])(batch, lengths)))(
        params
    )
    leaves_close(g, g_seq, atol=1e-5, rtol=1e-6)  # float32: a few ulp of entries up to about 35


# -- the batch form -------------------------------------------------------------------------


@pytest.mark.parametrize("name, method", [("lstm", "quasi-deer"), ("gru", "deer"), ("min_gru", "deer"),
                                          ("generic rnn", "quasi-deer")])
def test_batch_form_equals_each_example_and_scan_float64(x64, name, method):
    """``[T, 2, 3, I]`` with lengths 0..T: each example gets what the one-example form gives
    it (the examples iterate jointly, each stopping where it converged), values and info;
    values and gradients equal the sequential batch scan's."""
    cell = generic(recurrax.RNN(H)) if name.startswith("generic") else ALL[name]()
    params = to_dtype(cell.init(jax.random.key(0), I), jnp.float64)
    xs = 0.7 * jax.random.normal(jax.random.key(1), (T, 2, 3, I), jnp.float64)
    xs = xs.at[-3:, 0, 0].set(jnp.nan)  # padding of the example of length LENGTH, never read
    lengths = jnp.array([[LENGTH, T, 0], [1, T - 1, 11]])
    carry = jax.tree.map(lambda c: c + 0.3, cell.initial_carry((2, 3), jnp.float64))
    par = functools.partial(parallel_scan, cell, method=method, length=lengths)
    (final, ys, info), g = outputs_and_grads(par, params, xs, carry)
    assert ys.shape == (T, 2, 3, H) and info.iterations.shape == (2, 3)
    assert bool(info.converged.all()) and not bool(info.fell_back.any())
    for i in range(2):
        for j in range(3):
            one = parallel_scan(cell, params, xs[:, i, j], jax.tree.map(lambda c: c[i, j], carry), method=method,
                                length=lengths[i, j], fallback=False)
            leaves_close(jax.tree.map(lambda a: a[i, j], (final, info)), (one[0], one[2]), atol=1e-12)
            leaves_close(ys[:, i, j], one[1], atol=1e-12)
    expected, g_seq = outputs_and_grads(functools.partial(recurrax.scan, cell, length=lengths), params, xs, carry)
    leaves_close((final, ys), expected, atol=1e-9)
    leaves_close(g, g_seq, atol=1e-9)
    assert bool(jnp.isfinite(g[1]).all())  # NaN padding reaches no gradient


def test_batch_form_falls_back_once_for_the_whole_batch():
    cell, params, xs, carry = setup("gru")
    batch = jnp.stack([xs, 0.5 * xs[::-1]], 1)
    lengths = jnp.array([LENGTH, T])
    final, ys, info = parallel_scan(cell, params, batch, length=lengths, max_iters=1)
    assert info.fell_back.tolist() == [True, True] and not bool(info.converged.any())
    assert float(info.residual.max()) <= 1e-6  # the residual of what is returned: scan's
    leaves_close((final, ys), recurrax.scan(cell, params, batch, length=lengths), atol=1e-6)
    # a batch of no examples
    final, ys, info = parallel_scan(cell, params, batch[:, :0], length=lengths[:0])
    assert ys.shape == (T, 0, H) and info.iterations.shape == (0,)


# -- errors ---------------------------------------------------------------------------------


def test_errors():
    cell, params, xs, _ = setup("gru")
    with pytest.raises(ValueError, match="method must be one of 'deer', 'quasi-deer', 'quasi-deer-block', 'elk'; got"):
        parallel_scan(cell, params, xs, method="newton")
    with pytest.raises(ValueError, match=r"carry leaves must be \(2, 5\) .*batch \(2,\)"):
        parallel_scan(cell, params, jnp.stack([xs, xs], 1), jnp.zeros((3, H)))
    with pytest.raises(ValueError, match=r"resets must be \[T, \*batch\] = \[60\]"):
        parallel_scan(cell, params, xs, resets=jnp.zeros((T, 1), bool))
    with pytest.raises(TypeError, match="resets must be bool"):
        parallel_scan(cell, params, xs, resets=jnp.zeros(T))
    with pytest.raises(TypeError, match="reverse must be a bool"):
        parallel_scan(cell, params, xs, reverse="yes")
    with pytest.raises(ValueError, match="axis_name='time' is not an axis here: call parallel_scan inside"):
        parallel_scan(cell, params, xs, axis_name="time")
    with pytest.raises(ValueError, match='"quasi-deer-block" couples entry i of every carry leaf'):
        parallel_scan(recurrax.Stack(recurrax.LSTM(4), recurrax.GRU(3)), None, xs, method="quasi-deer-block")
    with pytest.raises(ValueError, match="max_iters must be a positive int; got 0"):
        parallel_scan(cell, params, xs, max_iters=0)
    with pytest.raises(ValueError, match="tol must be a positive number"):
        parallel_scan(cell, params, xs, tol=-1.0)
    with pytest.raises(ValueError, match=r"length must be in \[0, T\]"):
        parallel_scan(cell, params, xs, length=T + 1)
    with pytest.raises(ValueError, match=r"carry leaves must be \(5,\)"):
        parallel_scan(cell, params, xs, jnp.zeros((2, H)))
    with pytest.raises(TypeError, match="cell must be a cell: an object with init, initial_carry and apply"):
        parallel_scan(object(), params, xs)
    mg = MinGRU(H)
    with pytest.raises(ValueError, match=r"params do not fit MinGRU\(hidden_size=5\).*U \[input_size, 10\]"):
        mg.apply(params, jnp.zeros(H), xs[0])
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        MinLSTM(0)
