"""Randomness through a key: the key rule, ``Dropout``, ``Zoneout`` and stochastic user cells.

Every stochastic cell of the zoo (tag ``noise``: the wrappers around gated, linear and
function-built cells, a stack of them, the stochastic IndRNN of docs/packed.md) runs with a
key against independent references in float64: the NumPy loop of tests/reference.py fed
the masks the cell drew (values 1e-12), ``jax.vmap`` over the per-example keys of the
documented rule, and ``jax.vjp`` for the hand backward (gradients 1e-10). Their
evaluation mode (no key) is in the battery of tests/test_cells.py.
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrax
from tests import reference as ref
from tests.helpers import leaves_close, values_and_grads
from tests.zoo import DOCS_CELLS, ZOO, numpy_noisy_step, tagged, zoo_params

T, I = 7, 3
LENGTHS = np.array([T, 0, 3, 5])
B = len(LENGTHS)
RESETS = np.zeros((T, B), bool)
RESETS[[2, 3], 0] = RESETS[[1, 4], 2] = RESETS[[3], 3] = True
NOISY = tagged("noise")
KEY = jax.random.key(42)


def setup(name, batch=(B,)):
    cell = ZOO[name]()
    kp, kx, kc = jax.random.split(jax.random.key(0), 3)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), cell.init(kp, I))
    xs = jax.random.normal(kx, (T, *batch, I), jnp.float64)
    carry = jax.tree.map(lambda a: jax.random.normal(kc, a.shape, jnp.float64), cell.initial_carry(batch))
    return cell, params, xs, carry


def own_noise(cell, noise, table=None):
    """``{id(c): c's own noise}`` for every stochastic cell ``c`` in ``cell``, from ONE example's
    ``sample_noise``, in the layout the wrappers and ``Stack`` document (``(own, inner)``, per layer)."""
    table = {} if table is None else table
    sequence, steps = noise
    if isinstance(cell, (recurrax.Dropout, recurrax.Zoneout)):
        table[id(cell)] = sequence[0] if isinstance(cell, recurrax.Dropout) else steps[0]
        if isinstance(cell.cell, recurrax.Stochastic):
            own_noise(cell.cell, (sequence[1], steps[1]), table)
    elif isinstance(cell, recurrax.Stack):
        for layer, s, n in zip(cell.cells, sequence, steps):
            if isinstance(layer, recurrax.Stochastic):
                own_noise(layer, (s, n), table)
    else:  # the docs' stochastic IndRNN: its mask
        table[id(cell)] = sequence
    return table


@pytest.fixture(params=zoo_params(NOISY))
def name(request):
    return request.param


# -- values: the NumPy loop with the drawn masks --------------------------------------------------


@pytest.mark.parametrize("reverse,packed", [(False, False), (True, False), (False, True), (True, True)])
def test_noisy_scan_equals_the_numpy_loop_with_the_same_masks(name, reverse, packed, x64):
    cell, params, xs, carry = setup(name)
    resets = RESETS if packed else None
    final, ys = recurrax.scan(cell, params, xs, carry, length=LENGTHS, reverse=reverse, resets=resets, key=KEY)
    for i in range(B):
        # the key rule: example i of the batch form draws with fold_in(key, i)
        noise = cell.sample_noise(jax.random.fold_in(KEY, i), params, xs[:, i])
        table = own_noise(cell, ref.to_numpy(noise))
        step = numpy_noisy_step(cell, lambda c, table=table: table.get(id(c)))
        c0 = ref.to_numpy(jax.tree.map(lambda a, i=i: a[i], carry))
        want = ref.run(step, ref.to_numpy(params), xs[:, i], c0, length=LENGTHS[i], reverse=reverse,
                       resets=None if resets is None else resets[:, i], timed=True)
        leaves_close((jax.tree.map(lambda a, i=i: a[i], final), ys[:, i]), want, atol=1e-12)
    _, ys_eval = recurrax.scan(cell, params, xs, carry, length=LENGTHS, reverse=reverse, resets=resets)
    assert not np.allclose(ys, ys_eval, atol=1e-3), "the key changed nothing"


def test_without_a_key_dropout_is_its_cell_exactly():
    for inner in (recurrax.LSTM(4), recurrax.GRU(3, reset_after=True), recurrax.MinLSTM(2)):
        cell = recurrax.Dropout(inner, rate=0.5, recurrent_rate=0.5)
        params, xs = cell.init(jax.random.key(0), I), jax.random.normal(jax.random.key(1), (T, 2, I))
        leaves_close(recurrax.scan(cell, params, xs, length=jnp.array([7, 4])),
                     recurrax.scan(inner, params, xs, length=jnp.array([7, 4])), atol=0)
    # the same program, forward and backward (evaluation mode costs nothing)
    inner = recurrax.LSTM(4)
    params = inner.init(jax.random.key(0), I)
    for options in ({}, {"backward": "manual"}, {"projection": "before"}):
        program = lambda c, o=options: str(jax.make_jaxpr(jax.grad(  # noqa: E731
            lambda p: jnp.sum(recurrax.scan(c, p, xs, **o)[1])))(params))
        assert program(recurrax.Dropout(inner, rate=0.5, recurrent_rate=0.5)) == program(inner), options


def test_the_masks_have_the_documented_law():
    inner, params = recurrax.LSTM(2000), None  # the wrappers' noise needs no parameters
    xs = jnp.zeros((5, 4000))
    (x_mask, carry_mask), inner_noise = recurrax.Dropout(inner, rate=0.3, recurrent_rate=0.6).sample_noise(
        KEY, params, xs)[0]
    assert inner_noise is None and x_mask.shape == (4000,) and carry_mask.c is None  # c meets no weight
    for mask, rate in ((x_mask, 0.3), (carry_mask.h, 0.6)):
        mask = np.asarray(mask)
        assert abs((mask == 0).mean() - rate) < 0.03
        np.testing.assert_allclose(mask[mask != 0], 1 / (1 - rate), rtol=1e-6)  # inverted scaling
    _, (masks, _) = recurrax.Zoneout(inner, rate=0.2).sample_noise(KEY, params, xs)
    assert masks.h.shape == masks.c.shape == (5, 2000)  # one mask per step
    for m in (masks.h, masks.c):
        assert set(np.unique(m)) <= {0.0, 1.0} and abs(float(m.mean()) - 0.2) < 0.02
    assert not (np.asarray(masks.h[0]) == np.asarray(masks.h[1])).all()


# -- the key rule -----------------------------------------------------------------------------------


def test_batch_form_with_a_key_equals_vmap_over_the_key_rule(name, x64):
    cell, params, xs, carry = setup(name, batch=(2, 2))
    lengths = jnp.array([[T, 0], [3, 5]])
    batch = lambda p, x, c: recurrax.scan(cell, p, x, c, length=lengths, key=KEY)  # noqa: E731

    def vmapped(p, x, c):
        # the flattened (row-major) batch index i draws with fold_in(key, i)
        keys = jax.vmap(lambda i: jax.random.fold_in(KEY, i))(jnp.arange(4)).reshape(2, 2)
        one = lambda x, c, n, k: recurrax.scan(cell, p, x, c, length=n, key=k)  # noqa: E731
        for _ in range(2):
            one = jax.vmap(one, in_axes=(1, 0, 0, 0), out_axes=(0, 1))
        return one(x, c, lengths, keys)

    want = values_and_grads(batch, params, xs, carry)
    leaves_close(values_and_grads(vmapped, params, xs, carry), want, atol=1e-10)


def test_layers_derive_a_key_per_cell(x64):
    cell = recurrax.Dropout(recurrax.LSTM(3), rate=0.3, recurrent_rate=0.3)
    other = recurrax.Zoneout(recurrax.GRU(2), rate=0.4)
    xs = jax.random.normal(jax.random.key(1), (T, 2, I), jnp.float64)
    fold = jax.random.fold_in
    bi = recurrax.Bidirectional(cell, other)
    p = jax.tree.map(lambda a: a.astype(jnp.float64), bi.init(jax.random.key(0), I))
    (cf, cb), ys = bi.apply(p, xs, length=jnp.array([7, 4]), key=KEY)
    want_f = recurrax.scan(cell, p.forward, xs, length=jnp.array([7, 4]), key=fold(KEY, 0))
    want_b = recurrax.scan(other, p.backward, xs, length=jnp.array([7, 4]), reverse=True, key=fold(KEY, 1))
    leaves_close(((cf, cb), ys), ((want_f[0], want_b[0]), jnp.concatenate([want_f[1], want_b[1]], -1)), atol=0)
    deep = recurrax.Deep(recurrax.Unidirectional(recurrax.RNN(4)), bi)  # a layer without noise, then noise
    pd = jax.tree.map(lambda a: a.astype(jnp.float64), deep.init(jax.random.key(0), I))
    _, ys_deep = deep.apply(pd, xs, key=KEY)
    _, ys0 = recurrax.scan(recurrax.RNN(4), pd[0], xs)
    leaves_close(ys_deep, bi.apply(pd[1], ys0, key=fold(KEY, 1))[1], atol=0)


def test_a_key_is_ignored_by_a_cell_without_noise_and_checked():
    cell = recurrax.GRU(3)
    params, xs = cell.init(jax.random.key(0), I), jnp.ones((T, 2, I))
    leaves_close(recurrax.scan(cell, params, xs, key=KEY), recurrax.scan(cell, params, xs), atol=0)
    leaves_close(recurrax.scan(cell, params, xs, key=jax.random.PRNGKey(0)), recurrax.scan(cell, params, xs), atol=0)
    noisy = recurrax.Dropout(cell, rate=0.5)
    for bad in (3, jnp.ones(2), jax.random.split(KEY, 2), "key"):
        for run in (lambda: recurrax.scan(noisy, params, xs, key=bad),
                    lambda: recurrax.manual_bptt(noisy, params, xs, jnp.ones((T, 2, 3)), key=bad),
                    lambda: recurrax.Bidirectional(noisy).apply((params, params), xs, key=bad),
                    lambda: recurrax.Deep(recurrax.Unidirectional(noisy)).apply((params,), xs, key=bad)):
            with pytest.raises(TypeError, match="key must be one PRNG key"):
                run()


def test_a_new_key_does_not_compile_again(caplog):
    cell = recurrax.Dropout(recurrax.LSTM(4), rate=0.5, recurrent_rate=0.5)
    params, xs = cell.init(jax.random.key(0), I), jnp.ones((T, 2, I))
    first = recurrax.scan(cell, params, xs, key=jax.random.key(1))[1]
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
        second = recurrax.scan(recurrax.Dropout(recurrax.LSTM(4), rate=0.5, recurrent_rate=0.5), params, xs,
                               key=jax.random.key(2))[1]
    compiled = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Compiling ")]
    assert not [c for c in compiled if "scan" in c.split(" ")[1]], compiled
    assert not np.allclose(first, second)


# -- gradients: the hand backward composes with the masks ----------------------------------------------


@pytest.mark.parametrize("reverse,packed", [(False, True), (True, False)])
def test_manual_bptt_with_a_key_equals_vjp_of_scan(name, reverse, packed, x64):
    if "manual" not in ZOO[name].tags:
        pytest.skip(f"{name} has no hand backward")
    cell, params, xs, carry = setup(name)
    resets, lengths = (RESETS if packed else None), jnp.asarray(LENGTHS)
    run = lambda p, x, c: recurrax.scan(cell, p, x, c, length=lengths, reverse=reverse, resets=resets, key=KEY)  # noqa
    manual = lambda p, x, c: recurrax.scan(cell, p, x, c, length=lengths, reverse=reverse, resets=resets,  # noqa
                                           key=KEY, backward="manual")
    final, ys = jax.eval_shape(run, params, xs, carry)
    kb, kc = jax.random.split(jax.random.key(5))
    ys_bar = jax.random.normal(kb, ys.shape, ys.dtype)
    carry_bar = jax.tree.map(lambda f: jax.random.normal(kc, f.shape, f.dtype), final)

    @jax.jit
    def gradients(params, xs, carry):
        expected = jax.vjp(run, params, xs, carry)[1]((carry_bar, ys_bar))
        got = recurrax.manual_bptt(cell, params, xs, ys_bar, carry=carry, length=lengths, carry_bar=carry_bar,
                                   reverse=reverse, resets=resets, key=KEY)
        values, vjp = jax.vjp(manual, params, xs, carry)
        return got, expected, vjp((carry_bar, ys_bar)), values, run(params, xs, carry)

    got, expected, through_scan, values, expected_values = gradients(params, xs, carry)
    leaves_close(values, expected_values, atol=1e-12)
    leaves_close(got, expected, atol=1e-10)
    leaves_close(through_scan, expected, atol=1e-10)
    eager = recurrax.manual_bptt(cell, params, xs, ys_bar, carry=carry, length=LENGTHS, carry_bar=carry_bar,
                                 reverse=reverse, resets=resets, key=KEY)
    leaves_close(eager, expected, atol=1e-10)


def test_every_placement_and_checkpoint_agrees_with_a_key(name, x64):
    cell, params, xs, carry = setup(name)
    if "split" not in ZOO[name].tags:
        pytest.skip(f"{name} has no split form")
    runs = [lambda p, x, c, o=o: recurrax.scan(cell, p, x, c, length=LENGTHS, key=KEY, **o)
            for o in ({"projection": "before"}, {"projection": "in_loop"}, {"checkpoint": "carry"},
                      {"checkpoint": "all"})]
    (want, *others) = [values_and_grads(r, params, xs, carry) for r in runs]
    for got in others:
        leaves_close(got, want, atol=1e-10)


def test_the_cell_with_noise_keeps_the_capabilities(name, x64):
    """``with_noise`` gives a deterministic cell with the same capabilities, whose Jacobian
    diagonal and linear coefficients are those of its own ``apply`` (the docs' cell with its
    mask is still Stochastic: scan never draws from it)."""
    cell, params, xs, carry = setup(name, batch=())
    sequence, steps = cell.sample_noise(KEY, params, xs)
    t = 2
    held = cell.with_noise(sequence, jax.tree.map(lambda a: a[t], steps))
    tags = ZOO[name].tags - {"noise"}
    assert {tag for tag, p in (("split", recurrax.SplitForm), ("manual", recurrax.HandBackward),
                               ("diagonal", recurrax.JacobianDiagonal), ("linear", recurrax.LinearRecurrence))
            if isinstance(held, p)} == tags
    xp = cell.with_noise(sequence, None).project(params, xs[t]) if "split" in tags else xs[t]
    if "split" in tags:
        leaves_close(held.step(params, carry, xp), held.apply(params, carry, xs[t]), atol=1e-12)
    if "diagonal" in tags:
        (new, y), diag = held.step_jacobian_diagonal(params, carry, xp)
        s, unravel = jax.flatten_util.ravel_pytree(carry)
        J = jax.jacfwd(lambda s: jax.flatten_util.ravel_pytree(held.apply(params, unravel(s), xs[t])[0])[0])(s)
        np.testing.assert_allclose(jax.flatten_util.ravel_pytree(diag)[0], jnp.diagonal(J), atol=1e-12)
        leaves_close((new, y), held.apply(params, carry, xs[t]), atol=1e-12)
    if "linear" in tags:
        a, b = held.linear_coefficients(params, xp)
        leaves_close(held.apply(params, carry, xs[t])[0], a * carry + b, atol=1e-12)


class ApplyFormIndRNN(DOCS_CELLS.IndRNN):
    """IndRNN with the hand backward but no split form: its step methods take the raw input
    (``Dropout`` then masks ``x`` in the step's methods instead of ``project``)."""

    project = step = step_jacobian_diagonal = None  # no split form (and no diagonal of raw inputs)

    def apply(self, params, h, x):
        return self.step_fwd(params, h, x)[0]

    def step_fwd(self, params, h, x):
        (h_new, y), res = super().step_fwd(params, h, DOCS_CELLS.IndRNN.project(self, params, x))
        return (h_new, y), (res, x)

    def step_bwd(self, params, res, h_bar, y_bar):
        return super().step_bwd(params, res[0], h_bar, y_bar)

    def step_bwd_params(self, params, res, da):
        (p_bar, xu_bar), x = super().step_bwd_params(params, res[0], da), res[1]
        U_bar = jnp.einsum("...i,...j->ij", x, xu_bar)
        b_bar = xu_bar.reshape(-1, xu_bar.shape[-1]).sum(0)
        return p_bar._replace(U=U_bar, b=b_bar), xu_bar @ params.U.T


def test_dropout_of_a_hand_backward_without_split_form_masks_in_the_step(x64):
    cell = recurrax.Dropout(ApplyFormIndRNN(4), rate=0.4, recurrent_rate=0.3)
    assert isinstance(cell, recurrax.HandBackward) and not isinstance(cell, recurrax.SplitForm)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), cell.init(jax.random.key(0), I))
    xs = jax.random.normal(jax.random.key(1), (T, B, I), jnp.float64)
    ys_bar = jax.random.normal(jax.random.key(2), (T, B, 4), jnp.float64)
    run = lambda p, x: recurrax.scan(cell, p, x, length=LENGTHS, key=KEY)  # noqa: E731
    final, _ = jax.eval_shape(run, params, xs)
    want = jax.vjp(run, params, xs)[1]((jnp.zeros(final.shape), ys_bar))
    got = recurrax.manual_bptt(cell, params, xs, ys_bar, length=LENGTHS, key=KEY)
    leaves_close(got[:2], want, atol=1e-10)
    inner = recurrax.Dropout(DOCS_CELLS.IndRNN(4), rate=0.4, recurrent_rate=0.3)  # the same maths, split form
    leaves_close(run(params, xs), recurrax.scan(inner, params, xs, length=LENGTHS, key=KEY), atol=1e-12)


# -- the wrappers' own contract ---------------------------------------------------------------------


def test_wrappers_are_values_and_check_their_arguments():
    a = recurrax.Dropout(recurrax.LSTM(4), rate=0.25)
    assert a == recurrax.Dropout(recurrax.LSTM(4), rate=0.25) and hash(a) == hash(
        recurrax.Dropout(recurrax.LSTM(4), rate=0.25))
    assert a != recurrax.Dropout(recurrax.LSTM(4), rate=0.25, recurrent_rate=0.1)
    assert repr(a) == "Dropout(LSTM(hidden_size=4), rate=0.25)"
    assert repr(recurrax.Zoneout(recurrax.GRU(2), rate=0)) == "Zoneout(GRU(hidden_size=2), rate=0.0)"
    for bad in (-0.1, 1.0, 1.5, "0.5", True):
        with pytest.raises(ValueError, match="rate must be a number in"):
            recurrax.Dropout(recurrax.LSTM(4), recurrent_rate=bad)
        with pytest.raises(ValueError, match="rate must be a number in"):
            recurrax.Zoneout(recurrax.LSTM(4), rate=bad)
    with pytest.raises(TypeError, match="cell must be a cell"):
        recurrax.Dropout(jnp.tanh, rate=0.1)
    with pytest.raises(TypeError):
        recurrax.Zoneout(recurrax.LSTM(4))  # rate has no default
    nested = recurrax.Zoneout(recurrax.Dropout(recurrax.LSTM(4), rate=0.2), rate=0.1)
    assert isinstance(nested, recurrax.Stochastic) and isinstance(nested, recurrax.HandBackward)


def test_the_docs_blocks_run():
    from tests.zoo import PACKED, python_blocks

    namespace = dict(vars(DOCS_CELLS))
    exec(compile(DOCS_CELLS.packed_usage, str(PACKED), "exec"), namespace)  # noqa: S102
    exec(compile(python_blocks(PACKED)[0], str(PACKED), "exec"), {})  # noqa: S102  (the resets example)


class StepNoiseWithoutSteps(DOCS_CELLS.IndRNN):
    def sample_noise(self, key, params, xs):
        return None, jnp.ones(self.hidden_size)  # per-step noise must lead with [T]

    def with_noise(self, sequence_noise, step_noise):
        return self


@pytest.mark.parametrize("batch", [(), (2,)])
def test_step_noise_without_the_steps_is_named(batch):
    cell = StepNoiseWithoutSteps(4)
    params = cell.init(jax.random.key(0), I)
    with pytest.raises(ValueError, match=r"sample_noise must return step_noise whose leaves lead with the T=7"):
        recurrax.scan(cell, params, jnp.ones((T, *batch, I)), key=KEY)
