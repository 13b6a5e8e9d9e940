"""The one battery every cell passes, selected by capability (docs/cells.md).

The zoo (tests/zoo.py): every shipped cell, stacks, a ``dtype=bfloat16`` cell, a cell
built from plain functions, the user cells of docs/cells.md and docs/packed.md, and the
``Dropout`` and ``Zoneout`` wrappers (here in evaluation mode; with noise in
tests/test_noise.py). References are
independent: a NumPy loop (tests/reference.py), ``jax.vmap`` of the one-example form,
``jax.vjp``/``jax.jacfwd`` of the plain step. Tolerances: float64 values 1e-12, float64
gradients 1e-10 (float32 1e-5, bfloat16 5e-2).
"""

import logging
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import recurrax
from tests import reference as ref
from tests.helpers import leaves_close, values_and_grads
from tests.zoo import CAPABILITIES, FEW, SLOW_ONLY, ZOO, numpy_step, zoo_params

T, I, B = 7, 3, 4
NAMES = sorted(ZOO)
LOW_PRECISION = {"lstm_bf16"}  # computes in bfloat16 whatever its inputs


def setup(name, dtype=jnp.float32, batch=(), seed=0):
    cell = ZOO[name]()
    kp, kx, kc = jax.random.split(jax.random.key(seed), 3)
    params = jax.tree.map(lambda a: a.astype(dtype), cell.init(kp, I))
    xs = jax.random.normal(kx, (T, *batch, I)).astype(dtype)
    carry = jax.tree.map(lambda a: jax.random.normal(kc, a.shape).astype(dtype), cell.initial_carry(batch, dtype))
    return cell, params, xs, carry


def tol64(name):
    return 5e-2 if name in LOW_PRECISION else 1e-12


@pytest.fixture(params=zoo_params(NAMES))
def name(request):
    return request.param


# -- the protocol ------------------------------------------------------------------------


def test_protocol_shapes_and_batch_dimensions(name):
    cell, params, xs, _ = setup(name)
    carry, ys = recurrax.scan(cell, params, xs)
    expected = cell.initial_carry()
    assert jax.tree.map(jnp.shape, carry) == jax.tree.map(jnp.shape, expected)
    H = ys.shape[-1]
    assert ys.shape == (T, H)
    batch_xs = jnp.broadcast_to(xs[:, None, None], (T, 2, 3, I))
    carry_b, ys_b = recurrax.scan(cell, params, batch_xs)
    assert ys_b.shape == (T, 2, 3, H)
    assert jax.tree.map(jnp.shape, carry_b) == jax.tree.map(jnp.shape, cell.initial_carry((2, 3)))
    leaves_close(ys_b[:, 1, 2], ys, atol=1e-6)
    c, y = cell.apply(params, cell.initial_carry((2, 4)), jnp.ones((2, 4, I)))
    assert y.shape == (2, 4, H)


def test_equal_configurations_are_equal_cells_with_a_short_repr(name):
    a, b = ZOO[name](), ZOO[name]()
    assert a == b and hash(a) == hash(b)
    assert len(repr(a)) <= 160, repr(a)


# -- values ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
def test_dtypes(name, dtype, request):
    if dtype == "float64":
        request.getfixturevalue("x64")
    cell, params, xs, _ = setup(name, jnp.dtype(dtype))
    carry, ys = recurrax.scan(cell, params, xs, length=5)
    assert ys.dtype == dtype and all(leaf.dtype == dtype for leaf in jax.tree.leaves(carry))
    _, _, xs32, _ = setup(name)
    _, ys32 = recurrax.scan(cell, jax.tree.map(lambda a: a.astype(jnp.float32), params), xs32, length=5)
    tol = 5e-2 if dtype == "bfloat16" or name in LOW_PRECISION else 1e-5
    np.testing.assert_allclose(np.asarray(ys, np.float32), ys32, atol=tol)


@pytest.mark.parametrize("length,reverse,unroll", [(None, False, 1), (4, True, 1), (0, True, 1), (5, False, 3)])
def test_scan_equals_numpy_loop_float64(name, length, reverse, unroll, x64):
    cell, params, xs, carry0 = setup(name, jnp.float64)
    carry, ys = recurrax.scan(cell, params, xs, carry0, length=length, reverse=reverse, unroll=unroll)
    ref_carry, ref_ys = ref.run(numpy_step(name, cell), ref.to_numpy(params), xs, ref.to_numpy(carry0),
                                length=length, reverse=reverse)
    assert ys.dtype == jnp.float64
    leaves_close((carry, ys), (ref_carry, ref_ys), atol=tol64(name))
    if length is not None:
        assert (np.asarray(ys[length:]) == 0).all()
    if length == 0:
        leaves_close(carry, carry0, atol=0)


@pytest.mark.parametrize("reverse", [False, True])
def test_batch_form_equals_vmap_values_carries_gradients(name, reverse, x64):
    # per-example lengths incl. 0 and T, NaN in the padding, a non-zero initial carry
    cell, params, xs, carry = setup(name, jnp.float64, batch=(B,))
    lengths = jnp.array([T, 0, 3, 5])
    xs = jnp.where((jnp.arange(T)[:, None] >= lengths[None])[..., None], jnp.nan, xs)
    batch = lambda p, x, c: recurrax.scan(cell, p, x, c, length=lengths, reverse=reverse)  # noqa: E731

    def vmapped(p, x, c):
        one = lambda x, c, n: recurrax.scan(cell, p, x, c, length=n, reverse=reverse)  # noqa: E731
        final, ys = jax.vmap(one, in_axes=(1, 0, 0))(x, c, lengths)
        return final, jnp.swapaxes(ys, 0, 1)

    (out_b, g_b), (out_v, g_v) = (
        values_and_grads(batch, params, xs, carry),
        values_and_grads(vmapped, params, xs, carry),
    )
    leaves_close(out_b, out_v, atol=tol64(name))
    leaves_close(g_b, g_v, atol=1e-10 if name not in LOW_PRECISION else 5e-2)


@pytest.mark.parametrize("reverse", [False, True])
def test_gradients_finite_whatever_the_padding_holds(name, reverse):
    cell, params, xs, _ = setup(name)
    xs = xs.at[5:].set(jnp.nan)

    def loss(p, x):
        carry, ys = recurrax.scan(cell, p, x, length=5, reverse=reverse)
        return jnp.sum(ys**2) + sum(jnp.sum(c) for c in jax.tree.leaves(carry))

    gp, gx = jax.grad(loss, argnums=(0, 1))(params, xs)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves((gp, gx[:5])))
    assert (np.asarray(gx[5:]) == 0).all()
    assert any(np.abs(np.asarray(g)).sum() > 0 for g in jax.tree.leaves(gp))


def test_vmap_over_a_parameter_ensemble(name):
    cell, _, xs, _ = setup(name)
    keys = jax.random.split(jax.random.key(3), 3)
    ensemble = jax.vmap(cell.init, in_axes=(0, None))(keys, I)
    _, ys = jax.vmap(lambda p: recurrax.scan(cell, p, xs))(ensemble)
    for m in range(3):
        leaves_close(ys[m], recurrax.scan(cell, cell.init(keys[m], I), xs)[1], atol=1e-6)


# -- compilation -------------------------------------------------------------------------------


def test_scan_traces_once_for_equal_cells_eagerly_and_under_jit(name, caplog):
    cell, params, xs, _ = setup(name)
    recurrax.scan(cell, params, xs, length=3)  # compiled here
    params2, xs2 = jax.tree.map(lambda a: 2 * a, params), xs + 1.0
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
        recurrax.scan(ZOO[name](), params2, xs2, length=6)  # an equal cell
    compiled = [r.getMessage().split(" ")[1] for r in caplog.records if r.getMessage().startswith("Compiling ")]
    assert not [c for c in compiled if "scan" in c], f"an eager call with an equal cell and shapes compiled {compiled}"

    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(p, x, n):
        return recurrax.scan(cell, p, x, length=n)

    run(params, xs, 3)
    run(params, xs + 1.0, 6)
    run(jax.tree.map(lambda a: a * 2.0, params), xs, 2)


def test_inside_a_trace_scan_adds_no_jit_boundary():
    # a nested jit stops XLA optimising across it (benchmarks/HISTORY.md, "Cell redesign")
    cell, params, xs, _ = setup("gru_reset_after")
    jaxpr = jax.make_jaxpr(lambda p, x: recurrax.scan(cell, p, x)[1])(params, xs)
    assert not [e for e in jaxpr.jaxpr.eqns if e.primitive.name in ("pjit", "jit")], jaxpr


class JitEqualsEager(chex.TestCase):
    """chex variants: the same call with and without ``jax.jit`` around it."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*[(n, n) for n in NAMES if n not in SLOW_ONLY])
    def test_jit_equals_eager(self, name):
        cell, params, xs, carry = setup(name, batch=(2,))
        run = self.variant(lambda p, x, c, n: recurrax.scan(cell, p, x, c, length=n, reverse=True))
        expected = recurrax.scan(cell, params, xs, carry, length=jnp.array([5, 2]), reverse=True)
        with jax.disable_jit():
            plain = recurrax.scan(cell, params, xs, carry, length=jnp.array([5, 2]), reverse=True)
        atol = 5e-2 if name in LOW_PRECISION else 1e-6
        chex.assert_trees_all_close(run(params, xs, carry, jnp.array([5, 2])), expected, atol=atol)
        chex.assert_trees_all_close(plain, expected, atol=atol)


# -- capabilities ------------------------------------------------------------------------------


def test_capability_presence_is_truthful(name):
    """A cell has a capability's methods (``isinstance`` of its protocol, ``hasattr``) exactly when
    the zoo says it declares it, and every method it has runs (traced, not evaluated)."""
    cell, params, xs, carry = setup(name)
    declared = {tag for tag, protocol in CAPABILITIES.items() if isinstance(cell, protocol)}
    assert declared == ZOO[name].tags
    for tag, protocol in CAPABILITIES.items():
        methods = protocol.__capability_methods__
        assert all(hasattr(cell, m) for m in methods) == (tag in declared), (tag, methods)
    xp = cell.project(params, xs) if "split" in declared else xs
    if "manual" in declared:
        res = jax.eval_shape(lambda: cell.step_fwd(params, carry, xp[0]))
        jax.eval_shape(lambda: recurrax.manual_bptt(cell, params, xs, jnp.zeros((T, res[0][1].shape[-1]))))
    if "diagonal" in declared:
        jax.eval_shape(lambda: cell.step_jacobian_diagonal(params, carry, xp[0]))
    if "linear" in declared:
        jax.eval_shape(lambda: cell.linear_coefficients(params, xp[0]))
    if "noise" in declared:
        noise = jax.eval_shape(lambda: cell.sample_noise(jax.random.key(0), params, xs))
        jax.eval_shape(lambda: recurrax.scan(cell, params, xs, key=jax.random.key(0)))
        assert all(leaf.shape[:1] == (T,) for leaf in jax.tree.leaves(noise[1])), noise


def test_split_form_contract_and_both_projection_placements(name, x64):
    cell, params, xs, carry = setup(name, jnp.float64, batch=(B,))
    if "split" not in ZOO[name].tags:
        pytest.skip(f"{name} has no split form (runs as apply, tested above)")
    leaves_close(cell.apply(params, carry, xs[0]), cell.step(params, carry, cell.project(params, xs[0])),
                 atol=tol64(name))
    lengths = jnp.array([T, 0, 3, 5])
    runs = [lambda p, x, c, where=where: recurrax.scan(cell, p, x, c, length=lengths, projection=where)
            for where in ("before", "in_loop")]
    (out_a, g_a), (out_b, g_b) = (values_and_grads(r, params, xs, carry) for r in runs)
    leaves_close(out_a, out_b, atol=tol64(name))
    leaves_close(g_a, g_b, atol=1e-10 if name not in LOW_PRECISION else 5e-2)


def test_checkpoint_policies_agree(name, x64):
    cell, params, xs, carry = setup(name, jnp.float64, batch=(B,))
    lengths = jnp.array([T, 0, 3, 5])
    runs = [lambda p, x, c, ck=ck: recurrax.scan(cell, p, x, c, length=lengths, checkpoint=ck)
            for ck in (None, "dots", "carry")]
    results = [values_and_grads(r, params, xs, carry) for r in runs]
    for out, g in results[1:]:
        leaves_close(out, results[0][0], atol=tol64(name))
        leaves_close(g, results[0][1], atol=1e-10 if name not in LOW_PRECISION else 5e-2)


@pytest.mark.parametrize("batch,length,reverse", [((), 5, True), ((B,), None, False), ((B,), 0, False),
                                                  ((B,), "per example", True)])
def test_manual_bptt_equals_vjp_of_scan(name, batch, length, reverse, x64):
    cell, params, xs, carry = setup(name, jnp.float64, batch=batch)
    if "manual" not in ZOO[name].tags:
        pytest.skip(f"{name} has no hand-derived backward (its error is tested below)")
    if length == "per example":
        length = jnp.array([T, 0, 3, 5])
    run = lambda p, x, c: recurrax.scan(cell, p, x, c, length=length, reverse=reverse)  # noqa: E731
    placement = "in_loop" if reverse else "before"  # both placements of the manual forward pass
    manual = lambda p, x, c: recurrax.scan(cell, p, x, c, length=length, reverse=reverse, backward="manual",  # noqa
                                           projection=placement)
    kb, kc = jax.random.split(jax.random.key(5))
    final, ys = jax.eval_shape(run, params, xs, carry)
    ys_bar = jax.random.normal(kb, ys.shape, ys.dtype)
    carry_bar = jax.tree.map(lambda c: jax.random.normal(kc, c.shape, c.dtype), final)

    @jax.jit  # one compilation for all four gradients
    def gradients(params, xs, carry):
        expected = jax.vjp(run, params, xs, carry)[1]((carry_bar, ys_bar))
        got = recurrax.manual_bptt(cell, params, xs, ys_bar, carry=carry, length=length, carry_bar=carry_bar,
                                   reverse=reverse)
        values, vjp = jax.vjp(manual, params, xs, carry)  # scan's custom_vjp
        return got, expected, vjp((carry_bar, ys_bar)), values, run(params, xs, carry)

    got, expected, through_scan, values, expected_values = gradients(params, xs, carry)
    chex.assert_trees_all_close(values, expected_values, atol=1e-12, rtol=0)
    atol = 1e-10 if name not in LOW_PRECISION else 5e-2
    chex.assert_trees_all_close(got, expected, atol=atol, rtol=0)
    chex.assert_trees_all_close(through_scan, expected, atol=atol, rtol=0)


def test_manual_backward_says_what_is_missing(name):
    cell, params, xs, _ = setup(name)
    if "manual" in ZOO[name].tags:
        pytest.skip(f"{name} has the hand-derived backward (tested above)")
    match = r"needs the cell's step_fwd\(\) method"
    with pytest.raises(NotImplementedError, match=match):
        recurrax.scan(cell, params, xs, backward="manual")
    with pytest.raises(NotImplementedError, match=match):
        recurrax.manual_bptt(cell, params, xs, jnp.zeros((T, 5 if name != "function_cell" else 4)))


@pytest.mark.parametrize("name", zoo_params(NAMES, FEW))
def test_jacobian_diagonal_and_quasi_deer_without_a_full_jacobian(name, x64, monkeypatch):
    cell, params, xs, carry = setup(name, jnp.float64)
    if "diagonal" not in ZOO[name].tags:
        pytest.skip(f"{name} has no exact Jacobian diagonal (parallel_scan takes the full Jacobian's)")
    xp = cell.project(params, xs[0]) if "split" in ZOO[name].tags else xs[0]
    (new, y), diag = cell.step_jacobian_diagonal(params, carry, xp)
    s, unravel = jax.flatten_util.ravel_pytree(carry)
    J = jax.jacfwd(lambda s: jax.flatten_util.ravel_pytree(cell.apply(params, unravel(s), xs[0])[0])[0])(s)
    np.testing.assert_allclose(jax.flatten_util.ravel_pytree(diag)[0], jnp.diagonal(J), atol=tol64(name))
    leaves_close((new, y), cell.apply(params, carry, xs[0]), atol=tol64(name))
    # the batch form (a cell sees the batch in scan's batch form) equals vmap over examples
    _, _, xs_b, carry_b = setup(name, jnp.float64, batch=(2,))
    xp_b = cell.project(params, xs_b[0]) if "split" in ZOO[name].tags else xs_b[0]
    per_example = jax.vmap(lambda c, x: cell.step_jacobian_diagonal(params, c, x))(carry_b, xp_b)
    leaves_close(cell.step_jacobian_diagonal(params, carry_b, xp_b), per_example, atol=tol64(name))

    def no_jacfwd(*args, **kwargs):
        raise AssertionError("quasi-DEER formed a full Jacobian")

    monkeypatch.setattr(jax, "jacfwd", no_jacfwd)
    final, ys, info = recurrax.parallel_scan(cell, params, xs, carry, method="quasi-deer", length=5, fallback=False)
    assert bool(info.converged)
    leaves_close((final, ys), recurrax.scan(cell, params, xs, carry, length=5), atol=1e-9 if name not in
                 LOW_PRECISION else 5e-2)


def test_linear_coefficients_give_an_exact_single_pass(name, x64):
    cell, params, xs, carry = setup(name, jnp.float64)
    if "linear" not in ZOO[name].tags:
        pytest.skip(f"{name} is not a linear recurrence")
    a, b = cell.linear_coefficients(params, cell.project(params, xs[0]))
    leaves_close(cell.apply(params, carry, xs[0])[0], a * carry + b, atol=1e-12)
    final, ys, info = recurrax.parallel_scan(cell, params, xs, carry, length=5)
    assert int(info.iterations) == 1
    leaves_close((final, ys), recurrax.scan(cell, params, xs, carry, length=5), atol=1e-12)


@pytest.mark.parametrize("name", zoo_params(NAMES, FEW))
def test_gradcheck_has_manual_rows_exactly_when_the_cell_has_the_capability(name):
    cell, params, xs, _ = setup(name)
    if name in LOW_PRECISION:
        pytest.skip("gradcheck compares in float64; this cell computes in bfloat16")
    report = recurrax.gradcheck(cell, params, xs, length=5, reverse=True)
    assert report.passed, str(report)
    assert any(r.check == "manual_bptt vs autodiff" for r in report.rows) == ("manual" in ZOO[name].tags)


def test_docs_usage_block_runs():
    # the second code block of docs/cells.md, as a user would run it after the first
    from tests.zoo import DOCS_CELLS

    namespace = dict(vars(DOCS_CELLS))
    exec(compile(DOCS_CELLS.usage, "docs/cells.md", "exec"), namespace)  # noqa: S102
    assert namespace["report"].passed


def test_docs_variants_block_runs():
    # the example of docs/cells.md's section on the variants of the built-in cells
    from tests.zoo import DOCS

    variants = DOCS.read_text().split("## Variants of the built-in cells", 1)[1]
    (code,) = re.findall(r"```python\n(.*?)```", variants, re.S)
    exec(compile(code, "docs/cells.md", "exec"), {})  # noqa: S102


# -- built-in specifics --------------------------------------------------------------------------


def test_compute_dtype_option_keeps_the_carry_dtype():
    cell = recurrax.LSTM(4, dtype=jnp.bfloat16)
    params = cell.init(jax.random.key(0), 3)
    assert params.U.dtype == jnp.float32
    carry, ys = recurrax.scan(cell, params, jnp.ones((5, 3)))
    assert ys.dtype == jnp.float32 and carry.c.dtype == jnp.float32
    _, ys_full = recurrax.scan(recurrax.LSTM(4), params, jnp.ones((5, 3)))
    np.testing.assert_allclose(ys, ys_full, atol=3e-2)
    assert not np.allclose(ys, ys_full, atol=1e-7, rtol=0)  # it really ran in bfloat16


def test_initializer_options():
    ortho = recurrax.LSTM(6, recurrent_init=jax.nn.initializers.orthogonal())
    p = ortho.init(jax.random.key(0), 3)
    for k in range(4):
        block = np.asarray(p.W[:, 6 * k : 6 * (k + 1)])
        np.testing.assert_allclose(block.T @ block, np.eye(6), atol=1e-5)
    default = recurrax.GRU(16).init(jax.random.key(0), 3)
    bound = 1 / np.sqrt(16)
    for leaf in jax.tree.leaves(default):
        assert np.abs(np.asarray(leaf)).max() <= bound
    assert np.abs(np.asarray(default.W)).max() > 0.8 * bound
    nobias = recurrax.GRU(4, reset_after=True, use_bias=False).init(jax.random.key(0), 3)
    assert nobias.b is None and nobias.b_hn is None
    _, ys = recurrax.scan(recurrax.GRU(4, reset_after=True, use_bias=False), nobias, jnp.zeros((3, 3)))
    assert (np.asarray(ys) == 0).all()  # no bias: zero input and state stay zero
    fb = recurrax.LSTM(3, forget_bias=1.0, bias_init=jax.nn.initializers.zeros).init(jax.random.key(0), 2)
    assert np.asarray(fb.b).tolist() == [0.0] * 3 + [1.0] * 3 + [0.0] * 6


def test_built_in_cells_are_public_classes_that_compare_by_value():
    assert recurrax.LSTM(8) == recurrax.LSTM(8) and isinstance(recurrax.GRU(3), recurrax.GRU)
    assert repr(recurrax.GRU(3, reset_after=True, activation=jax.nn.relu)) == \
        "GRU(hidden_size=3, activation=relu, reset_after=True)"
    assert recurrax.LSTM(8) != recurrax.LSTM(9) and recurrax.GRU(4) != recurrax.GRU(4, reset_after=True)
    with pytest.raises(dataclasses_frozen_error()):
        recurrax.LSTM(8).hidden_size = 9


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_variant_options_are_checked_and_their_params_laid_out():
    with pytest.raises(ValueError, match=r"proj_size must be a positive int; got 0"):
        recurrax.LSTM(4, proj_size=0)
    with pytest.raises(TypeError, match=r"peephole must be a bool"):
        recurrax.LSTM(4, peephole="yes")
    with pytest.raises(TypeError, match=r"layer_norm must be a bool"):
        recurrax.GRU(4, layer_norm=1)
    with pytest.raises(ValueError, match=r"peephole=True, layer_norm=True\) is not supported.*proj_size combines"):
        recurrax.LSTM(4, peephole=True, layer_norm=True)
    p = recurrax.LSTM(4, proj_size=2, peephole=True, forget_bias=1.0).init(jax.random.key(0), 3)
    assert jax.tree.map(jnp.shape, p) == recurrax.CellParams((3, 16), (2, 16), (16,), W_hr=(4, 2), peephole=(12,))
    assert np.asarray(p.b[4:8]).tolist() == [1.0] * 4
    ln = recurrax.LSTM(4, layer_norm=True).init(jax.random.key(0), 3)
    assert [np.asarray(a).tolist() for a in (ln.gain_x, ln.gain_h, ln.gain_c, ln.b_c)] == \
        [[1.0] * 16, [1.0] * 16, [1.0] * 4, [0.0] * 4]
    assert recurrax.LSTM(4, layer_norm=True, use_bias=False).init(jax.random.key(0), 3).b_c is None
    assert type(recurrax.GRU(4, reset_after=True, layer_norm=True).init(jax.random.key(0), 3)).__name__ == \
        "GRUResetAfterParams"
    plain = recurrax.LSTM(4).init(jax.random.key(0), 3)
    with pytest.raises(ValueError, match=r"CellParams with U \[input_size, 16\] and W \[2, 16\], W_hr \[4, 2\]"):
        recurrax.scan(recurrax.LSTM(4, proj_size=2), plain, jnp.ones((5, 3)))
    with pytest.raises(ValueError, match=r"\(W_hr, peephole, gain_x, gain_h, gain_c, b_c None\)"):
        recurrax.scan(recurrax.LSTM(4), p, jnp.ones((5, 3)))
    with pytest.raises(ValueError, match=r"carry must be \[\*batch, 2\]"):
        wrong = recurrax.LSTMCarry(jnp.zeros(4), jnp.zeros(4))  # h is [P] = [2]
        recurrax.LSTM(4, proj_size=2, peephole=True).apply(p, wrong, jnp.ones(3))


@pytest.mark.parametrize("options", [{"proj_size": 3}, {"layer_norm": True}])
def test_single_lstm_options_outside_the_zoo(options, x64):
    """The zoo has these options in combinations; alone, ``proj_size`` and ``layer_norm`` take
    other branches (the carry's sizes; the diagonal without a projection): NumPy loop, hand
    backward and Jacobian diagonal in float64, as the battery checks them."""
    cell = recurrax.LSTM(4, **options)
    params = jax.tree.map(lambda a: a + 0.1, cell.init(jax.random.key(0), I))  # non-trivial gains
    params = ref.to_numpy(jax.tree.map(lambda a: a.astype(jnp.float64), params))
    xs = np.random.default_rng(0).normal(size=(T, 2, I))
    carry = jax.tree.map(lambda a: np.random.default_rng(1).normal(size=a.shape), cell.initial_carry((2,)))

    @jax.jit
    def run(params, xs, carry):
        out, vjp = jax.vjp(lambda p, x, c: recurrax.scan(cell, p, x, c), params, xs, carry)
        ys_bar = jnp.cos(out[1])
        manual = recurrax.manual_bptt(cell, params, xs, ys_bar, carry=carry, carry_bar=out[0])
        s, unravel = jax.flatten_util.ravel_pytree(carry)
        J = jax.jacfwd(lambda s: jax.flatten_util.ravel_pytree(cell.apply(params, unravel(s), xs[0])[0])[0])(s)
        diag = cell.step_jacobian_diagonal(params, carry, cell.project(params, xs[0]))[1]
        return out, manual, vjp((out[0], ys_bar)), jax.flatten_util.ravel_pytree(diag)[0], jnp.diagonal(J)

    out, manual, expected, diag, jac_diag = run(params, xs, carry)
    for b in range(2):
        one = lambda tree: jax.tree.map(lambda a: a[:, b] if a.ndim == 3 else a[b], tree)  # noqa: B023, E731
        leaves_close(jax.tree.map(lambda a: a[b], out[0]), ref.run(ref.step_fn(cell), params, xs[:, b],
                     one(carry))[0], atol=1e-12)
        leaves_close(out[1][:, b], ref.run(ref.step_fn(cell), params, xs[:, b], one(carry))[1], atol=1e-12)
    chex.assert_trees_all_close(manual, expected, atol=1e-10, rtol=0)
    np.testing.assert_allclose(diag, jac_diag, atol=1e-12, rtol=0)
