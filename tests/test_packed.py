"""Packed sequences (``resets``) in scan, manual_bptt and the layers (docs/packed.md).

References are independent of the code under test: each segment sliced out and run alone
through a plain ``recurrax.scan`` (no resets, no padding), and the NumPy loop of
tests/reference.py. Float64 throughout: values 1e-12, gradients 1e-10.

The patterns cover a reset at step 0, segments of one step, resets inside the padding, a
zero length, an example without resets, and ``reverse=True`` (each segment backwards from
its own last step).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrax
from tests import reference as ref
from tests.helpers import leaves_close, values_and_grads
from tests.zoo import ZOO, numpy_step

T, I = 8, 3
# per example: (length, steps where a segment starts)
PATTERNS = [
    (8, [0, 3, 4, 7]),  # a reset at step 0; one-step segments [3] and [7]
    (6, [2, 5, 6, 7]),  # a one-step segment [5] just before the padding; flags on the padding (6, 7)
    (0, [1, 5]),  # nothing runs
    (8, []),  # no reset: a plain scan
]
B = len(PATTERNS)
LENGTHS = np.array([n for n, _ in PATTERNS])
RESETS = np.zeros((T, B), bool)
for b, (_, starts) in enumerate(PATTERNS):
    RESETS[starts, b] = True
OPTIONS = {  # scan's options: every checkpoint policy and projection, and the manual backward
    "default": {},
    "carry": {"checkpoint": "carry"},
    "all, before": {"checkpoint": "all", "projection": "before"},
    "dots, in_loop": {"checkpoint": "dots", "projection": "in_loop"},
    "manual, before": {"backward": "manual", "projection": "before"},
    "manual, in_loop": {"backward": "manual", "projection": "in_loop"},
}


def setup(name, batch=(B,)):
    cell = ZOO[name]()
    kp, kx, kc = jax.random.split(jax.random.key(0), 3)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), cell.init(kp, I))
    xs = jax.random.normal(kx, (T, *batch, I), jnp.float64)
    carry = jax.tree.map(lambda a: jax.random.normal(kc, a.shape, jnp.float64), cell.initial_carry(batch))
    return cell, params, xs, carry


def segments(length, resets):
    starts = [0] + [t for t in range(1, length) if resets[t]]
    return [(a, b) for a, b in zip(starts, starts[1:] + [length]) if a < b]


def run_alone(cell, params, xs, carry, reverse, **options):
    """Each example's segments sliced out and run alone by a plain scan: ``(final, ys)`` of the
    batch. The final carry is the last segment's (reverse: the first's); ``carry`` if none."""
    finals, ys = [], []
    for b, (length, _) in enumerate(PATTERNS):
        c0 = jax.tree.map(lambda a: a[b], carry)
        out, final = [], c0
        for a, e in segments(length, RESETS[:, b]):
            c, y = recurrax.scan(cell, params, xs[a:e, b], c0, reverse=reverse, **options)
            out.append(y)
            if not reverse or a == 0:
                final = c
        H = recurrax.output_size(cell, params, I)
        y = jnp.concatenate(out) if out else jnp.zeros((0, H), xs.dtype)
        ys.append(jnp.concatenate([y, jnp.zeros((T - y.shape[0], H), xs.dtype)]))
        finals.append(final)
    return jax.tree.map(lambda *a: jnp.stack(a), *finals), jnp.stack(ys, axis=1)


def manual_options(name):
    return [k for k in OPTIONS if "manual" not in k or "manual" in ZOO[name].tags]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name", ["lstm", "gru_reset_after", "min_lstm", "stack", "user_indrnn", "function_cell",
                                  "dropout_lstm", "zoneout_gru"])
def test_resets_equal_the_numpy_loop(name, reverse, x64):
    cell, params, xs, carry = setup(name)
    final, ys = recurrax.scan(cell, params, xs, carry, length=LENGTHS, resets=RESETS, reverse=reverse)
    step = numpy_step(name, cell)
    for b in range(B):
        c0 = ref.to_numpy(jax.tree.map(lambda a: a[b], carry))
        want_c, want_y = ref.run(step, ref.to_numpy(params), xs[:, b], c0, length=LENGTHS[b], reverse=reverse,
                                 resets=RESETS[:, b])
        leaves_close((jax.tree.map(lambda a: a[b], final), ys[:, b]), (want_c, want_y), atol=1e-12)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name", ["lstm", "stack", "user_indrnn", "min_gru"])
def test_values_and_gradients_equal_each_segment_run_alone_for_every_option(name, reverse, x64):
    cell, params, xs, carry = setup(name)
    lengths, resets = jnp.asarray(LENGTHS), jnp.asarray(RESETS)
    want = values_and_grads(lambda p, x, c: run_alone(cell, p, x, c, reverse), params, xs, carry)
    for option in manual_options(name):
        got = values_and_grads(lambda p, x, c: recurrax.scan(cell, p, x, c, length=lengths, resets=resets,
                                                             reverse=reverse, **OPTIONS[option]), params, xs, carry)
        leaves_close(got[0], want[0], atol=1e-12)
        leaves_close(got[1], want[1], atol=1e-10)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name", ["lstm", "stack", "user_indrnn", "dropout_lstm"])
def test_manual_bptt_with_resets_equals_vjp_of_each_segment_alone(name, reverse, x64):
    cell, params, xs, carry = setup(name)
    final, ys = jax.eval_shape(lambda: run_alone(cell, params, xs, carry, reverse))
    kb, kc = jax.random.split(jax.random.key(7))
    ys_bar = jax.random.normal(kb, ys.shape, ys.dtype)
    carry_bar = jax.tree.map(lambda f: jax.random.normal(kc, f.shape, f.dtype), final)
    _, vjp = jax.vjp(lambda p, x, c: run_alone(cell, p, x, c, reverse), params, xs, carry)
    want = vjp((carry_bar, ys_bar))
    for length in (LENGTHS, jnp.asarray(LENGTHS)):  # eager (its own compiled path) and traced
        got = recurrax.manual_bptt(cell, params, xs, ys_bar, carry=carry, length=length, carry_bar=carry_bar,
                                   reverse=reverse, resets=RESETS)
        leaves_close(got, want, atol=1e-10)
    traced = jax.jit(lambda r: recurrax.manual_bptt(cell, params, xs, ys_bar, carry=carry, length=LENGTHS,
                                                    carry_bar=carry_bar, reverse=reverse, resets=r))(RESETS)
    leaves_close(traced, want, atol=1e-10)


@pytest.mark.parametrize("reverse", [False, True])
def test_one_example_with_a_static_length_and_the_batch_form_equal_vmap(reverse, x64):
    cell, params, xs, carry = setup("gru")
    batch = lambda p, x, c: recurrax.scan(cell, p, x, c, length=LENGTHS, resets=RESETS, reverse=reverse)  # noqa

    def vmapped(p, x, c):
        one = lambda x, c, n, r: recurrax.scan(cell, p, x, c, length=n, resets=r, reverse=reverse)  # noqa: E731
        final, ys = jax.vmap(one, in_axes=(1, 0, 0, 1))(x, c, jnp.asarray(LENGTHS), jnp.asarray(RESETS))
        return final, jnp.swapaxes(ys, 0, 1)

    want = values_and_grads(batch, params, xs, carry)
    leaves_close(values_and_grads(vmapped, params, xs, carry), want, atol=1e-10)
    # a Python int length inside a trace runs only its steps (no mask): the flags after it drop out
    b = 1
    static = jax.jit(lambda x, c: recurrax.scan(cell, params, x, c, length=int(LENGTHS[b]), resets=RESETS[:, b],
                                                reverse=reverse))(xs[:, b], carry[b])
    leaves_close(static, jax.tree.map(lambda a: a[b] if a.ndim == 2 else a[:, b], want[0]), atol=1e-12)


def test_reset_flags_on_padding_and_at_step_zero_change_nothing(x64):
    cell, params, xs, carry = setup("lstm")
    lengths = jnp.array([8, 6, 0, 5])
    resets = np.zeros((T, 4), bool)
    resets[0] = True  # step 0 starts from the initial carry anyway
    resets[6:, 1] = resets[:, 2] = resets[5:, 3] = True  # padding
    for reverse in (False, True):
        got = recurrax.scan(cell, params, xs, carry, length=lengths, resets=resets, reverse=reverse)
        want = recurrax.scan(cell, params, xs, carry, length=lengths, reverse=reverse)
        leaves_close(got, want, atol=0)


def test_bidirectional_runs_each_segment_backwards_on_its_own(x64):
    layer = recurrax.Bidirectional(recurrax.LSTM(3), recurrax.GRU(4))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), layer.init(jax.random.key(0), I))
    xs = jax.random.normal(jax.random.key(1), (T, B, I), jnp.float64)
    zeros = (layer.forward.initial_carry((B,), jnp.float64),
             layer.backward.initial_carry((B,), jnp.float64))

    def packed(p, x, c):
        final, ys = layer.apply(p, x, length=jnp.asarray(LENGTHS), resets=RESETS)
        return tuple(final), ys

    def alone(p, x, c):
        cf, yf = run_alone(layer.forward, p.forward, x, zeros[0], False)
        cb, yb = run_alone(layer.backward, p.backward, x, zeros[1], True)
        return (cf, cb), jnp.concatenate([yf, yb], -1)

    leaves_close(values_and_grads(packed, params, xs, None), values_and_grads(alone, params, xs, None), atol=1e-10)


def test_deep_gives_every_layer_the_resets(x64):
    net = recurrax.Deep(recurrax.Bidirectional(recurrax.RNN(3)), recurrax.Unidirectional(recurrax.GRU(2),
                                                                                         reverse=True))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), net.init(jax.random.key(0), I))
    xs = jax.random.normal(jax.random.key(1), (T, B, I), jnp.float64)
    _, ys = net.apply(params, xs, length=LENGTHS, resets=RESETS)
    for b, (length, _) in enumerate(PATTERNS):
        want = np.zeros((T, 2))
        for a, e in segments(length, RESETS[:, b]):
            want[a:e] = net.apply(params, xs[a:e, b])[1]
        np.testing.assert_allclose(ys[:, b], want, atol=1e-12)


@pytest.mark.parametrize("resets,error,match", [
    (np.zeros((T, 3), bool), ValueError, r"resets must be \[T, \*batch\] = \[8, 4\]"),
    (np.zeros(T, bool), ValueError, "resets must be"),
    (np.zeros((T, 4), np.int32), TypeError, "resets must be bool"),
    (np.zeros((T, 4), np.float32), TypeError, "resets must be bool"),
])
def test_bad_resets_are_named(resets, error, match):
    cell = recurrax.GRU(3)
    params, xs = cell.init(jax.random.key(0), I), jnp.ones((T, 4, I))
    for run in (lambda: recurrax.scan(cell, params, xs, resets=resets),
                lambda: recurrax.manual_bptt(cell, params, xs, jnp.ones((T, 4, 3)), resets=resets),
                lambda: recurrax.Bidirectional(cell).apply(recurrax.Bidirectional(cell).init(jax.random.key(0), I),
                                                           xs, resets=resets)):
        with pytest.raises(error, match=match):
            run()


def test_resets_as_a_list_and_cudnn_refuses_them():
    cell = recurrax.LSTM(3)
    params = cell.init(jax.random.key(0), I)
    flags = [False, True, False, False]
    got = recurrax.scan(cell, params, jnp.ones((4, I)), resets=flags)[1]
    leaves_close(got[1:], recurrax.scan(cell, params, jnp.ones((3, I)))[1], atol=1e-6)
    layer = recurrax.Unidirectional(cell, impl="cudnn")
    with pytest.raises(ValueError, match='resets .* needs impl="scan"'):
        layer.apply(params, jnp.ones((4, I)), resets=flags)
