"""The LSTM layers' ``impl="cudnn"``, checked on CPU.

cuDNN itself needs a GPU (benchmarks/gpu.sh checks it there against ``scan``). Here the
kernel is replaced by ``jax.experimental.rnn.lstm_ref``, JAX's pure-JAX reference of the
same call (same flat weights, same batch-first layout, same ``seq_lengths``), so that the
packing, the layout changes, the reverse flip, ``length == 0`` and the NaN padding are all
checked against :func:`recurrax.scan`, exactly, in float64.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import rnn

import recurrax
from recurrax._core import _cudnn

T, I, H = 7, 3, 4
LENGTHS = np.array([[7, 3, 0], [1, 5, 7]])  # a batch of (2, 3) examples, incl. lengths 0 and T


PRECISIONS_SEEN = []


def _reference_kernel(x, h0, c0, weights, seq_lengths, *, input_size, hidden_size, num_layers, bidirectional,
                      precision):
    PRECISIONS_SEEN.append(precision)  # lstm_ref has no precision: float64 here, exact
    # cuDNN rejects a zero length, so the layer must never pass one.
    if not isinstance(seq_lengths, jax.core.Tracer):
        assert int(seq_lengths.min()) >= 1, "lstm_layer passed a zero length to the kernel"
    W_ih, W_hh, b_ih, b_hh = rnn.unpack_lstm_weights(weights, input_size, hidden_size, num_layers, bidirectional)
    return rnn.lstm_ref(x, h0, c0, W_ih, W_hh, b_ih, b_hh, seq_lengths, input_size, hidden_size,
                        num_layers, 0.0, bidirectional)


@pytest.fixture
def reference_kernel(monkeypatch):
    monkeypatch.setattr(_cudnn, "_cudnn_kernel", _reference_kernel)


def _f64(tree):
    return jax.tree.map(lambda a: a.astype(jnp.float64), tree)


def _inputs(batch):
    xs = jax.random.normal(jax.random.key(1), (T, *batch, I), jnp.float64)
    pad = (np.arange(T).reshape((T,) + (1,) * len(batch)) >= LENGTHS)[..., None]
    return jnp.where(pad, jnp.nan, xs), jnp.asarray(LENGTHS)


def test_packed_weights_are_cudnn_layout():
    cell = recurrax.LSTM(H)
    pf, pb = (cell.init(k, I) for k in jax.random.split(jax.random.key(0)))
    W_ih, W_hh, b_ih, b_hh = rnn.unpack_lstm_weights(_cudnn.pack_weights([pf, pb], jnp.float32), I, H, 1, True)
    for d, p in enumerate((pf, pb)):
        np.testing.assert_array_equal(W_ih[d], p.U.T)
        np.testing.assert_array_equal(W_hh[d], p.W.T)
        np.testing.assert_array_equal(b_ih[d], p.b)
        np.testing.assert_array_equal(b_hh[d], 0)
    no_bias = recurrax.LSTM(H, use_bias=False).init(jax.random.key(0), I)
    assert (
        rnn.unpack_lstm_weights(_cudnn.pack_weights([no_bias], jnp.float32), I, H, 1, False)[2][0].tolist()
        == [0.0] * 4 * H
    )


@pytest.mark.parametrize("kind", ["forward", "reverse", "bidirectional"])
def test_cudnn_layer_equals_scan(reference_kernel, kind, x64):
    """Values, final carries and gradients (params, xs, carry) equal the scan layer's, 1e-12."""
    make = {"forward": recurrax.Unidirectional, "bidirectional": recurrax.Bidirectional,
            "reverse": lambda c, **kw: recurrax.Unidirectional(c, reverse=True, **kw)}[kind]
    fast, slow = make(recurrax.LSTM(H), impl="cudnn"), make(recurrax.LSTM(H))
    params = _f64(slow.init(jax.random.key(0), I))
    xs, length = _inputs((2, 3))
    shapes = jax.eval_shape(lambda: slow.apply(params, xs, length=length)[0])
    carry0 = jax.tree.map(lambda a: jax.random.normal(jax.random.key(2), a.shape, jnp.float64), shapes)

    def loss(layer):
        def f(p, xs, c):
            final, ys = layer.apply(p, xs, length=length, carry=c)
            return sum(jnp.sum(jnp.sin(a)) for a in jax.tree.leaves((final, ys)))
        return f

    apply = lambda lay: jax.jit(lambda p, x, c: lay.apply(p, x, length=length, carry=c))  # noqa: E731
    out_fast, out_slow = (apply(lay)(params, xs, carry0) for lay in (fast, slow))
    np.testing.assert_allclose(out_fast[1], out_slow[1], rtol=0, atol=1e-12)
    assert jax.tree.structure(out_fast[0]) == jax.tree.structure(out_slow[0])
    for a, b in zip(jax.tree.leaves(out_fast[0]), jax.tree.leaves(out_slow[0])):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    g_fast, g_slow = (jax.jit(jax.grad(loss(lay), argnums=(0, 1, 2)))(params, xs, carry0) for lay in (fast, slow))
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_slow)):
        assert bool(jnp.isfinite(a).all())
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_cudnn_one_example_and_deep(reference_kernel, x64):
    """The one-example form ``[T, I]`` and a deep stack of cuDNN layers, under jit."""
    fast = recurrax.Deep(recurrax.Bidirectional(recurrax.LSTM(H), impl="cudnn"),
                         recurrax.Unidirectional(recurrax.LSTM(H), impl="cudnn"))
    slow = recurrax.Deep(recurrax.Bidirectional(recurrax.LSTM(H)), recurrax.Unidirectional(recurrax.LSTM(H)))
    params = _f64(slow.init(jax.random.key(0), I))
    xs = jax.random.normal(jax.random.key(1), (T, I), jnp.float64)
    run = jax.jit(lambda p, x, length: fast.apply(p, x, length=length))
    for length in (0, 4, T):  # traced
        got, want = run(params, xs, length), slow.apply(params, xs, length=length)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    for length in (0, 3):  # a Python int (static for scan)
        got, want = fast.apply(params, xs, length=length), slow.apply(params, xs, length=length)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_cudnn_refuses_other_cells_and_impls():
    with pytest.raises(ValueError, match=r'impl="cudnn" runs the standard LSTM.*GRU'):
        recurrax.Unidirectional(recurrax.GRU(H), impl="cudnn")
    with pytest.raises(ValueError, match=r'impl="cudnn" runs the standard LSTM'):
        recurrax.Bidirectional(recurrax.LSTM(H), recurrax.LSTM(H, gate_activation=jax.nn.hard_sigmoid), impl="cudnn")
    for variant in ({"proj_size": 2}, {"peephole": True}, {"layer_norm": True}):
        with pytest.raises(ValueError, match=r'no proj_size, peephole or layer_norm.*' + next(iter(variant))):
            recurrax.Unidirectional(recurrax.LSTM(H, **variant), impl="cudnn")
    with pytest.raises(ValueError, match=r'impl must be "scan" or "cudnn"; got \'fast\''):
        recurrax.Unidirectional(recurrax.LSTM(H), impl="fast")


@pytest.mark.parametrize("precision,expected", [(None, jax.lax.Precision.HIGHEST),
                                                ("highest", jax.lax.Precision.HIGHEST),
                                                ("tensorfloat32", jax.lax.Precision.HIGH)])
def test_cudnn_precision_reaches_the_kernel(reference_kernel, precision, expected):
    # jax.experimental.rnn would allow TF32 for precision=None: the layers always pass one
    assert _cudnn_allow_tf32(None)
    for layer in (recurrax.Unidirectional(recurrax.LSTM(H), impl="cudnn", precision=precision),
                  recurrax.Bidirectional(recurrax.LSTM(H), impl="cudnn", precision=precision)):
        PRECISIONS_SEEN.clear()
        layer.apply(layer.init(jax.random.key(0), I), jnp.ones((T, 2, I)))
        assert PRECISIONS_SEEN == [expected]
        assert _cudnn_allow_tf32(expected) == (precision == "tensorfloat32")
        assert ("precision=" in repr(layer)) == (precision is not None)


def _cudnn_allow_tf32(precision):
    return rnn._lstm_cudnn_allow_tf32(precision)


def test_cudnn_precision_errors():
    with pytest.raises(ValueError, match=r"precision='highest' sets the cuDNN kernel's .* does nothing with "
                                         r"impl='scan'; drop it, or use impl=\"cudnn\""):
        recurrax.Unidirectional(recurrax.LSTM(H), precision="highest")
    with pytest.raises(ValueError, match=r'precision must be "highest" .* or "tensorfloat32" .*; got \'high\''):
        recurrax.Bidirectional(recurrax.LSTM(H), impl="cudnn", precision="high")


def test_cudnn_kernel_says_what_it_needs():
    """Without the reference: float64 is refused by name, and without a GPU the error says so."""
    layer = recurrax.Unidirectional(recurrax.LSTM(H), impl="cudnn")
    params = layer.init(jax.random.key(0), I)
    with jax.enable_x64(True), pytest.raises(TypeError, match="float32 xs"):
        layer.apply(_f64(params), jnp.ones((T, 2, I), jnp.float64))
    if not any(d.platform == "gpu" for d in jax.devices()):
        with pytest.raises(RuntimeError, match="needs an NVIDIA GPU"):
            layer.apply(params, jnp.ones((T, 2, I), jnp.float32))
