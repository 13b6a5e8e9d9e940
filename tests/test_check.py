"""check_cell: each kind of broken claim is named; every zoo cell passes; the hand backward
runs wherever autodiff runs (half-precision inputs, an explicit compute dtype)."""

import dataclasses
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrax
from tests.zoo import DOCS_BUILT, DOCS_CELLS, FEW, ZOO, tagged, zoo_params

IndRNN = DOCS_CELLS.IndRNN
T, I = 4, 3


def inputs(cell, batch=(2,), seed=0):
    kp, kx = jax.random.split(jax.random.key(seed))
    return cell.init(kp, I), jax.random.normal(kx, (T, *batch, I))


# -- planted broken claims: check_cell names each ----------------------------------------------


@dataclasses.dataclass(frozen=True)
class ApplyWithoutBias(IndRNN):
    def init(self, key, input_size):
        return super().init(key, input_size)._replace(b=jnp.full(self.hidden_size, 0.1))

    def apply(self, params, h, x):  # step(project(x)) adds b, this does not
        h = jnp.tanh(x @ params.U + DOCS_CELLS.per_unit(params.u, h) * h)
        return h, h


@dataclasses.dataclass(frozen=True)
class WrongCarryCotangent(IndRNN):
    def step_bwd(self, params, res, h_bar, y_bar):
        prev, da = super().step_bwd(params, res, h_bar, y_bar)
        return 1.01 * prev, da


@dataclasses.dataclass(frozen=True)
class WrongParamsBar(IndRNN):
    def step_bwd_params(self, params, res, da):
        p_bar, xp_bar = super().step_bwd_params(params, res, da)
        return p_bar._replace(u=2 * p_bar.u), xp_bar


@dataclasses.dataclass(frozen=True)
class DiagonalWithoutTanh(IndRNN):
    def step_jacobian_diagonal(self, params, h, xu):
        out, _ = self.step_fwd(params, h, xu)
        return out, DOCS_CELLS.per_unit(params.u, h)  # forgets tanh's derivative


@dataclasses.dataclass(frozen=True)
class DiagonalRaises(IndRNN):
    def step_jacobian_diagonal(self, params, h, xu):
        raise RuntimeError("planted")


@dataclasses.dataclass(frozen=True)
class OffsetCoefficients:
    """``h = h / 2 + tanh(x U)``, linear in ``h``, whose coefficients are off by 0.1."""

    hidden_size: int

    def init(self, key, input_size):
        return jax.random.normal(key, (input_size, self.hidden_size))

    def initial_carry(self, batch_shape=(), dtype=jnp.float32):
        return jnp.zeros((*batch_shape, self.hidden_size), dtype)

    def apply(self, U, h, x):
        h = 0.5 * h + jnp.tanh(x @ U)
        return h, h

    def project(self, U, xs):
        return jnp.tanh(xs @ U)

    def step(self, U, h, xp):
        h = 0.5 * h + xp
        return h, h

    def linear_coefficients(self, U, xp):
        return jnp.full_like(xp, 0.5), xp + 0.1


@dataclasses.dataclass(frozen=True)
class MixedPrecisionIndRNN(IndRNN):
    """Keeps the carry's dtype (so autodiff runs bfloat16 xs with float32 params)."""

    def step_fwd(self, params, h, xu):
        (h_new, _), res = super().step_fwd(params, h, xu)
        h_new = h_new.astype(h.dtype)
        return (h_new, h_new), res


@dataclasses.dataclass(frozen=True)
class StepFwdChangesTheCarryDtype(IndRNN):
    def step(self, params, h, xu):  # keeps the dtype, step_fwd does not
        h_new = jnp.tanh(xu + DOCS_CELLS.per_unit(params.u, h) * h).astype(h.dtype)
        return h_new, h_new


@dataclasses.dataclass(frozen=True)
class MaskForgottenInBackward(DOCS_CELLS.StochasticIndRNN):
    """The docs' stochastic IndRNN whose step_bwd forgets the mask's transpose."""

    def step_bwd(self, params, res, h_bar, y_bar):
        return DOCS_CELLS.IndRNN.step_bwd(self, params, res, h_bar, y_bar)


@dataclasses.dataclass(frozen=True)
class NoiseFromNumPy(DOCS_CELLS.StochasticIndRNN):
    """Draws its mask with NumPy's generator, not from the key: not a function of it (two
    draws of 64 units agree with probability 2**-64 at rate 0.5)."""

    def sample_noise(self, key, params, xs):
        keep = np.random.default_rng().random(self.hidden_size) > self.rate
        return jnp.asarray(keep, xs.dtype) / (1 - self.rate), None


PLANTED = [
    (ApplyWithoutBias(4), "split form", r"step\(project\(x\)\) vs apply .*differ by 1\.0\de-01 \(first at step t=0"),
    (WrongCarryCotangent(4), "hand backward", r"step_bwd's carry cotangent dL/ds_\{t-1\} vs jax\.vjp of a step "
                                              r"differ by .*first at step t=0"),
    (WrongParamsBar(4), "hand backward", r"step_bwd_params' params_bar .* \(leaf u\)"),
    (DiagonalWithoutTanh(4), "jacobian diagonal", r"diag vs diagonal of jax\.jacfwd of a step differ by"),
    (DiagonalRaises(4), "jacobian diagonal", r"raised RuntimeError: planted"),
    (OffsetCoefficients(4), "linear coefficients", r"a \* carry \+ b vs apply's carry differ by 1\.00e-01"),
    (MaskForgottenInBackward(4, rate=0.5), "noise", r'backward="manual" vs autodiff: dL/dxs differ by .*first at '
                                                    r"step t=\d"),
    (NoiseFromNumPy(64, rate=0.5), "noise", r"sample_noise twice with one key differ by"),
    (StepFwdChangesTheCarryDtype(4), "dtype", r'scan\(backward="manual"\) raised TypeError.*manual_bptt raised'),
]


@pytest.mark.parametrize("cell,row,detail", PLANTED, ids=[type(c).__name__ for c, _, _ in PLANTED])
def test_check_cell_names_each_planted_bug(cell, row, detail):
    params, xs = inputs(cell)
    report = recurrax.check_cell(cell, params, xs)
    assert not report.ok
    failed = [r.name for r in report.rows if r.status == "FAIL"]
    assert failed == [row], report
    assert report[row].detail and re.search(detail, report[row].detail), report[row].detail
    assert row in repr(report) and "1 FAILED" in repr(report)


def test_check_cell_passes_the_correct_user_cells_and_skips_what_autodiff_cannot_run():
    report = recurrax.check_cell(MixedPrecisionIndRNN(4), *inputs(IndRNN(4)))
    assert report.ok and report["dtype"].status == "pass", report
    report = recurrax.check_cell(IndRNN(4), *inputs(IndRNN(4)))  # its step makes a bf16 carry float32
    assert report.ok and report["dtype"].status == "skipped", report
    assert "autodiff itself does not run bfloat16 xs with float32 params" in report["dtype"].detail


@pytest.mark.parametrize("name", zoo_params(ZOO, FEW))
def test_every_zoo_cell_passes_check_cell(name):
    cell = ZOO[name]()
    params, xs = inputs(cell)
    carry = jax.tree.map(lambda a: 0.5 * jnp.ones_like(a), cell.initial_carry((2,)))
    report = recurrax.check_cell(cell, params, xs, carry=carry)
    assert report.ok, report
    claimed = {"split form": "split", "hand backward": "manual", "jacobian diagonal": "diagonal",
               "linear coefficients": "linear", "noise": "noise"}
    assert [r.name for r in report.rows] == [k for k, tag in claimed.items() if tag in ZOO[name].tags] + ["dtype"]


def test_gradcheck_runs_check_cell_first_and_fails_on_a_broken_claim(x64):
    cell = ApplyWithoutBias(3)
    params, xs = inputs(cell, batch=())
    report = recurrax.gradcheck(cell, params, xs)
    assert all(r.passed for r in report.rows if r.check == "autodiff vs finite diff")  # apply's gradients ...
    assert not report.passed and report.cell_check["split form"].status == "FAIL"  # ... but step is not apply
    assert "split form" in str(report) and "FAIL" in str(report)


# -- the hand backward runs where autodiff runs -----------------------------------------------


@pytest.mark.parametrize("name", zoo_params(set(tagged("manual")) - DOCS_BUILT, FEW | {"gru_reset_after"}))
@pytest.mark.parametrize("half", [jnp.bfloat16, jnp.float16])
def test_hand_backward_with_half_precision_inputs_and_float32_params(name, half):
    cell = ZOO[name]()
    params, xs = inputs(cell)
    xs = xs.astype(half)

    def loss(p, x, backward):
        final, ys = recurrax.scan(cell, p, x, backward=backward)
        return jnp.sum(jnp.tanh(ys.astype(jnp.float32))) + sum(jnp.sum(c.astype(jnp.float32))
                                                                 for c in jax.tree.leaves(final))

    with jax.numpy_dtype_promotion("standard"):  # mixed precision needs JAX's standard promotion
        grads = jax.jit(lambda p, x: [jax.grad(loss, argnums=(0, 1))(p, x, b) for b in ("autodiff", "manual")])
        auto, manual = grads(params, xs)
    assert jax.tree.map(lambda a: a.dtype, manual) == jax.tree.map(lambda a: a.dtype, auto)
    scale = max(float(jnp.abs(a.astype(jnp.float32)).max()) for a in jax.tree.leaves(auto))
    # half precision keeps 8 (bfloat16) or 11 (float16) bits; both paths round differently
    chex.assert_trees_all_close(jax.tree.map(lambda a: a.astype(jnp.float32) / scale, manual),
                                jax.tree.map(lambda a: a.astype(jnp.float32) / scale, auto), atol=3e-2, rtol=0)


@pytest.mark.parametrize("make", [lambda: recurrax.LSTM(4, dtype=jnp.float64),
                                  lambda: recurrax.GRU(4, dtype=jnp.float64),
                                  lambda: recurrax.Stack(recurrax.RNN(3, dtype=jnp.float64), recurrax.GRU(4))])
def test_hand_backward_with_an_explicit_dtype_equal_to_the_inputs(make, x64):
    cell = make()
    assert isinstance(cell, recurrax.HandBackward)
    params, xs = inputs(cell)
    params, xs = jax.tree.map(lambda a: a.astype(jnp.float64), (params, xs))
    final, ys = recurrax.scan(cell, params, xs)
    ys_bar = jnp.asarray(np.random.default_rng(0).normal(size=ys.shape))
    expected = jax.vjp(lambda p, x: recurrax.scan(cell, p, x)[1], params, xs)[1](ys_bar)
    got = recurrax.manual_bptt(cell, params, xs, ys_bar)[:2]
    chex.assert_trees_all_close(got, expected, atol=1e-10, rtol=0)


# -- gradcheck localises: the step whose backward goes wrong ------------------------------------


@dataclasses.dataclass(frozen=True)
class WrongWhereMarked(IndRNN):
    """IndRNN whose step_bwd is wrong (x1.1) only at steps whose input channel 0 is set."""

    def project(self, params, xs):
        return super().project(params, xs), xs[..., 0]

    def step_fwd(self, params, h, xp):
        xu, marker = xp
        out, res = super().step_fwd(params, h, xu)
        return out, (res, marker)

    def step_bwd(self, params, res, h_bar, y_bar):
        res, marker = res
        prev, da = super().step_bwd(params, res, h_bar, y_bar)
        return jnp.where(marker[..., None] > 0.5, 1.1 * prev, prev), da

    def step_bwd_params(self, params, res, da):
        res, marker = res
        p_bar, xu_bar = super().step_bwd_params(params, res, da)
        return p_bar, (xu_bar, jnp.zeros_like(marker))


@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_names_the_step_whose_backward_is_wrong(reverse, x64):
    cell, t, steps = WrongWhereMarked(4), 3, 7
    params = cell.init(jax.random.key(0), I)
    xs = jax.random.normal(jax.random.key(1), (steps, I)).at[:, 0].set(0.0).at[t, 0].set(1.0)
    report = recurrax.gradcheck(cell, params, xs, reverse=reverse, length=6)
    assert not report.passed and report.first_bad_step == t, str(report)
    step_rows = {r.check: r for r in report.rows if r.leaf == "dL/ds_{t-1}"}
    assert step_rows["autodiff vs finite diff"].passed  # autodiff is right ...
    assert step_rows["manual_bptt vs autodiff"].step == t  # ... the hand backward goes wrong at t
    assert step_rows["manual_bptt vs finite diff"].step == t
    assert f"dL/ds_{{t-1}} first disagrees at step t={t}" in str(report)
    assert "step_bwd's carry cotangent" in report.cell_check["hand backward"].detail


def test_gradcheck_per_step_rows_pass_for_a_right_cell_and_fail_for_a_wrong_autodiff(x64):
    from recurrax._core._gradcheck import planted_bug_cell

    cell = recurrax.GRU(3)
    params, xs = cell.init(jax.random.key(0), 2), jax.random.normal(jax.random.key(1), (5, 2, 2))
    report = recurrax.gradcheck(cell, params, xs, length=jnp.array([5, 2]))
    assert report.passed and report.first_bad_step is None
    assert {r.check for r in report.rows if r.leaf == "dL/ds_{t-1}"} == {
        "autodiff vs finite diff", "manual_bptt vs finite diff", "manual_bptt vs autodiff"}
    bug = planted_bug_cell(3, scale=1.01)  # tanh's derivative off at every step: the last valid step is first
    report = recurrax.gradcheck(bug, bug.init(jax.random.key(0), 2), xs[:, 0], length=4)
    assert report.first_bad_step == 3, str(report)


@pytest.mark.parametrize("name", zoo_params(["dropout_lstm", "zoneout_gru", "stack_noisy"], {"stack_noisy"}))
def test_gradcheck_with_resets_and_key_passes_on_right_cells(name, x64):
    cell = ZOO[name]()
    params, xs = cell.init(jax.random.key(0), 2), jax.random.normal(jax.random.key(1), (6, 2, 2))
    resets = jnp.zeros((6, 2), bool).at[0, 0].set(True).at[3, 0].set(True).at[1, 1].set(True)
    report = recurrax.gradcheck(cell, params, xs, length=jnp.array([6, 4]), resets=resets, key=jax.random.key(2))
    assert report.passed, str(report)
    assert "manual_bptt vs autodiff" in {r.check for r in report.rows}


def test_gradcheck_draws_the_noise_of_key(x64):
    cell = MaskForgottenInBackward(4, rate=0.5)
    params, xs = cell.init(jax.random.key(0), I), jax.random.normal(jax.random.key(1), (6, I))
    # evaluation mode: no mask, nothing to forget; check_cell's noise row finds the bug anyway
    report = recurrax.gradcheck(cell, params, xs)
    assert all(r.passed for r in report.rows) and not report.passed, str(report)
    assert report.cell_check["noise"].status == "FAIL" and "dL/dcarry differ by" in report.cell_check["noise"].detail
    report = recurrax.gradcheck(cell, params, xs, key=jax.random.key(3))
    assert not all(r.passed for r in report.rows) and "noise from key" in str(report)
    # the hand backward drops the mask at the first step it runs (the last one): found there
    assert report.first_bad_step == 5, str(report)


# -- the parity matrix ------------------------------------------------------------------------


def _parity(name_or_cell, dtypes):
    cell = ZOO[name_or_cell]() if isinstance(name_or_cell, str) else name_or_cell
    params, xs = inputs(cell, batch=(2,))
    return recurrax.parity(cell, params, xs, length=jnp.array([T, 2]), dtypes=dtypes)


def _expected_rows(cell, dtypes):
    names = ['backward="manual"'] if isinstance(cell, recurrax.HandBackward) else []
    names += ['checkpoint="dots"', 'checkpoint="carry"', 'checkpoint="all"']
    names += ['projection="before"', 'projection="in_loop"'] if isinstance(cell, recurrax.SplitForm) else []
    names += ["parallel_scan", "jax.vmap of the one-example form", "eager (no jit)"]
    rows = [f"{n}, {d}" for d in dtypes for n in names + (["cudnn"] if d == "float32" else [])]
    return rows + (["forward mode", "second order"] if "float64" in dtypes else [])


@pytest.mark.parametrize("name", zoo_params(ZOO, {"lstm", "min_gru", "user_indrnn", "stack_noisy"}))
def test_parity_in_float64_for_every_zoo_cell(name):
    report = _parity(name, ("float64",))
    assert report.ok, report
    assert [r.name for r in report.rows] == _expected_rows(ZOO[name](), ("float64",))
    if name == "lstm_bf16":  # computes in bfloat16 inside: its tolerance, no finite differences
        assert report["parallel_scan, float64"].tol == 5e-2 and report["second order"].status == "skipped"
    else:
        assert all(r.status == "pass" for r in report.rows), report


# lstm_proj_ln: its layer norms' backward cancels in bfloat16 unless computed in float32
@pytest.mark.parametrize("name", ["lstm", "user_indrnn", "lstm_proj_ln"])
def test_parity_in_every_dtype(name):
    report = _parity(name, ("float64", "float32", "bfloat16"))
    assert report.ok, report
    assert [r.name for r in report.rows] == _expected_rows(ZOO[name](), ("float64", "float32", "bfloat16"))
    cudnn = report["cudnn, float32"]
    if name == "lstm" and jax.default_backend() == "gpu":
        assert cudnn.status == "pass", report
    else:
        assert cudnn.status == "skipped" and cudnn.detail in ("no GPU in this process", "not a standard LSTM")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ZOO))
def test_parity_in_every_dtype_for_every_zoo_cell(name):
    assert _parity(name, ("float64", "float32", "bfloat16")).ok


def test_parity_fails_for_a_wrong_hand_backward():
    report = _parity(WrongCarryCotangent(4), ("float64", "float32"))
    failed = {r.name for r in report.rows if r.status == "FAIL"}
    assert failed == {'backward="manual", float64', 'backward="manual", float32'}, report
    assert "gradients (params, xs, carry) differ" in report['backward="manual", float64'].detail
