"""Sequence layers, the readout and the input helpers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrax
from tests import reference as ref
from tests.helpers import leaves_close, scan_trip_counts

T, I = 7, 3


@pytest.mark.parametrize("length", [None, 0, 4, T])
def test_bidirectional_equals_reference_loops(length, x64):
    fwd, bwd = recurrax.GRU(4, reset_after=True), recurrax.LSTM(3)
    layer = recurrax.Bidirectional(fwd, bwd)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), layer.init(jax.random.key(0), I))
    xs = jax.random.normal(jax.random.key(1), (T, I), jnp.float64)
    (cf, cb), ys = layer.apply(params, xs, length=length)
    rcf, ryf = ref.run(ref.step_fn(fwd), ref.to_numpy(params.forward), xs, np.zeros(4), length=length)
    rcb, ryb = ref.run(ref.step_fn(bwd), ref.to_numpy(params.backward), xs, (np.zeros(3), np.zeros(3)),
                       length=length, reverse=True)
    np.testing.assert_allclose(ys, np.concatenate([ryf, ryb], -1), atol=1e-12)
    leaves_close((cf, cb), (rcf, rcb), atol=1e-12)


def test_deep_unidirectional_equals_stack():
    cells = (recurrax.LSTM(4), recurrax.GRU(5), recurrax.RNN(2))
    net = recurrax.Deep(*map(recurrax.Unidirectional, cells))
    params = net.init(jax.random.key(0), I)
    xs = jax.random.normal(jax.random.key(1), (T, I))
    c_deep, y_deep = net.apply(params, xs, length=5)
    c_stack, y_stack = recurrax.scan(recurrax.Stack(*cells), params, xs, length=5)
    leaves_close((c_deep, y_deep), (c_stack, y_stack), atol=1e-6)


def test_deep_bidirectional_shapes_carry_and_vmap():
    net = recurrax.Deep(recurrax.Bidirectional(recurrax.LSTM(4)), recurrax.Bidirectional(recurrax.GRU(3)),
                        recurrax.Unidirectional(recurrax.RNN(2), reverse=True))
    params = net.init(jax.random.key(0), I)
    assert params[1].forward.U.shape == (8, 9) and params[2].U.shape == (6, 2)
    xs = jax.random.normal(jax.random.key(1), (3, T, I))
    lengths = jnp.array([7, 2, 0])
    carries, ys = jax.jit(jax.vmap(lambda x, n: net.apply(params, x, length=n)))(xs, lengths)
    assert ys.shape == (3, T, 2)
    for b in range(3):
        c1, y1 = net.apply(params, xs[b], length=int(lengths[b]))
        np.testing.assert_allclose(ys[b], y1, atol=1e-6)
        assert (np.asarray(y1[int(lengths[b]):]) == 0).all()
        leaves_close(jax.tree.map(lambda a: a[b], carries), c1, atol=1e-6)


def test_layer_initial_carry_is_used():
    layer = recurrax.Bidirectional(recurrax.RNN(2))
    params = layer.init(jax.random.key(0), I)
    xs = jnp.zeros((T, I))
    c0 = recurrax.Bidirectional.Params(jnp.ones(2), -jnp.ones(2))
    _, ys = layer.apply(params, xs, carry=c0, length=1)
    expected_f = jnp.tanh(jnp.ones(2) @ params.forward.W + params.forward.b)
    expected_b = jnp.tanh(-jnp.ones(2) @ params.backward.W + params.backward.b)
    np.testing.assert_allclose(ys[0], jnp.concatenate([expected_f, expected_b]), rtol=1e-6)


def test_dense_readout_is_the_lectures_O_of_V_s_plus_c():
    readout = recurrax.Dense(3, activation=jax.nn.softmax)
    p = readout.init(jax.random.key(0), 4)
    s = jax.random.normal(jax.random.key(1), (T, 4))
    logits = np.asarray(s) @ np.asarray(p.V) + np.asarray(p.c)
    expected = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(readout.apply(p, s), expected, rtol=1e-5)
    with pytest.raises(ValueError, match=r"s must be \[..., 4\]"):
        readout.apply(p, jnp.ones(5))


def test_one_hot_matches_the_lecture_and_embedding_is_its_efficient_form():
    # The lecture's vocabulary: <sos>=1, <eos>=2, <pad>=3, the=4, first=5 (ids 1..L; 0 unused here)
    vocab = {"<sos>": 1, "<eos>": 2, "<pad>": 3, "the": 4, "first": 5}
    ids = jnp.array([vocab[w] for w in ["<sos>", "the", "first", "<eos>", "<pad>"]])
    x = recurrax.one_hot(ids, 6)
    assert x.shape == (5, 6) and (np.asarray(x).sum(1) == 1).all()
    assert np.asarray(x[1]).tolist() == [0, 0, 0, 0, 1, 0]  # "the": only bit 4 set
    emb = recurrax.Embedding(3)
    p = emb.init(jax.random.key(0), 6)
    np.testing.assert_allclose(emb.apply(p, ids), x @ p.E, rtol=1e-6)
    # and as the first layer: scanning one-hot inputs with U == scanning embeddings with W
    cell = recurrax.GRU(4)
    params = cell.init(jax.random.key(1), 6)
    _, ys_onehot = recurrax.scan(cell, params, x)
    lookup = params._replace(U=jnp.eye(12))  # the lookup already applied U (all 3 gate blocks)
    _, ys_emb = recurrax.scan(cell, lookup, emb.apply(recurrax.Embedding.Params(params.U), ids))
    np.testing.assert_allclose(ys_onehot, ys_emb, atol=1e-6)


@pytest.mark.parametrize("length", [0, 4])
def test_a_shared_int_length_under_vmap_runs_only_the_valid_steps(length):
    # No mask shared by the batch (docs/design.md, "Known upstream bug"): the loops run the
    # valid steps only, and give what the masked path (an array length) gives.
    net = recurrax.Deep(recurrax.Bidirectional(recurrax.GRU(3, reset_after=True)),
                        recurrax.Unidirectional(recurrax.LSTM(2), reverse=True))
    params = net.init(jax.random.key(0), I)
    xs = jax.random.normal(jax.random.key(1), (2, T, I)).at[:, length:].set(jnp.nan)
    run = jax.vmap(lambda x: net.apply(params, x, length=length))
    assert set(scan_trip_counts(jax.make_jaxpr(run)(xs).jaxpr)) == {length}
    carries, ys = run(xs)
    masked = jax.vmap(lambda x: net.apply(params, x, length=jnp.asarray(length)))(xs)
    leaves_close((carries, ys), masked, atol=1e-6)
    assert (np.asarray(ys[:, length:]) == 0).all() and np.isfinite(np.asarray(ys)).all()
