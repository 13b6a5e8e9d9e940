"""Bad input raises at trace time with a message naming the argument and the fix."""

import jax
import jax.numpy as jnp
import pytest

import recurrax


@pytest.fixture
def lstm():
    cell = recurrax.lstm(4)
    return cell, cell.init(jax.random.key(0), 3)


def test_rank_one_xs(lstm):
    cell, params = lstm
    with pytest.raises(ValueError, match=r"xs must be \[T, input_size\].*\[T, \*batch, input_size\].*got shape \(5,\).*xs\[:, None\]"):
        recurrax.scan(cell, params, jnp.ones(5))


@pytest.mark.parametrize("shape", [(5, 7), (5, 2, 7)])
def test_wrong_input_size_names_x_and_input_size(lstm, shape):
    cell, params = lstm
    with pytest.raises(ValueError, match=r"x must be \[\.\.\., 3\] \(input_size=3.*LSTM\(hidden_size=4\).*cell\.init\(key, 7\)"):
        recurrax.scan(cell, params, jnp.ones(shape))


def test_wrong_input_size_in_a_stack():
    cell = recurrax.stack(recurrax.gru(4), recurrax.rnn(2))
    params = cell.init(jax.random.key(0), 3)
    with pytest.raises(ValueError, match=r"x must be \[\.\.\., 3\]"):
        recurrax.scan(cell, params, jnp.ones((5, 2)))


def test_integer_xs_points_to_one_hot(lstm):
    cell, params = lstm
    with pytest.raises(TypeError, match=r"xs must be floating point; got int32.*one_hot"):
        recurrax.scan(cell, params, jnp.ones((5, 3), jnp.int32))


@pytest.mark.parametrize("bad", [2.0, jnp.float32(2), True])
def test_length_must_be_an_integer(lstm, bad):
    cell, params = lstm
    with pytest.raises(TypeError, match=r"length must be integers.*jnp\.asarray\(n, jnp\.int32\)"):
        recurrax.scan(cell, params, jnp.ones((5, 3)), length=bad)


def test_length_must_have_the_batch_shape(lstm):
    cell, params = lstm
    with pytest.raises(ValueError, match=r"length must be a scalar or have the batch shape \(\) .*got shape \(2,\)"):
        recurrax.scan(cell, params, jnp.ones((5, 3)), length=jnp.array([5, 3]))
    with pytest.raises(ValueError, match=r"batch shape \(2,\) .*got shape \(3,\)"):
        recurrax.scan(cell, params, jnp.ones((5, 2, 3)), length=jnp.array([5, 3, 1]))


@pytest.mark.parametrize("bad", [-1, 6])
def test_concrete_length_out_of_range(lstm, bad):
    cell, params = lstm
    with pytest.raises(ValueError, match=rf"length must be in \[0, T\] = \[0, 5\]; got values in \[{bad}, {bad}\]"):
        recurrax.scan(cell, params, jnp.ones((5, 3)), length=bad)


def test_traced_length_out_of_range_is_clipped(lstm):
    cell, params = lstm
    run = jax.jit(lambda n: recurrax.scan(cell, params, jnp.ones((5, 3)), length=n))
    full = recurrax.scan(cell, params, jnp.ones((5, 3)))
    assert jnp.allclose(run(9)[1], full[1], atol=1e-6)
    assert (run(-3)[1] == 0).all()


def test_carry_without_the_batch_dimensions(lstm):
    cell, params = lstm
    with pytest.raises(ValueError, match=r"carry leaves must be \(2, 4\) \(\[\*batch, \.\.\.\] with batch \(2,\).*got a leaf of shape \(4,\)"):
        recurrax.scan(cell, params, jnp.ones((5, 2, 3)), cell.initial_carry())
    with pytest.raises(ValueError, match=r"carry leaves must be \(4,\)"):
        recurrax.scan(cell, params, jnp.ones((5, 3)), cell.initial_carry((2,)))


def test_carry_of_the_wrong_structure(lstm):
    cell, params = lstm
    with pytest.raises(ValueError, match=r"carry must have the structure of cell\.initial_carry\(\)"):
        recurrax.scan(cell, params, jnp.ones((5, 3)), jnp.zeros(4))


def test_params_of_another_cell():
    gru = recurrax.gru(4)
    lstm_params = recurrax.lstm(4).init(jax.random.key(0), 3)
    with pytest.raises(ValueError, match=r"params do not fit GRU\(hidden_size=4\).*U \[input_size, 12\].*init\(key, input_size\)"):
        recurrax.scan(gru, lstm_params, jnp.ones((5, 3)))
    ra = recurrax.gru(4, reset_after=True)
    with pytest.raises(ValueError, match=r"reset_after=True\): expected GRUResetAfterParams"):
        recurrax.scan(ra, gru.init(jax.random.key(0), 3), jnp.ones((5, 3)))


def test_apply_with_mismatched_batch_dims_does_not_broadcast(lstm):
    cell, params = lstm
    with pytest.raises(ValueError, match=r"batch dimensions of x \(2,\).*cell\.initial_carry\(x\.shape\[:-1\]\)"):
        cell.apply(params, cell.initial_carry(), jnp.ones((2, 3)))


@pytest.mark.parametrize("bad", [0, -2, 2.5, True])
def test_bad_hidden_size(bad):
    with pytest.raises(ValueError, match=r"hidden_size must be a positive int"):
        recurrax.lstm(bad)


def test_bad_unroll(lstm):
    cell, params = lstm
    with pytest.raises(ValueError, match=r"unroll must be a positive int or a bool; got 0"):
        recurrax.scan(cell, params, jnp.ones((5, 3)), unroll=0)


def test_composition_errors():
    with pytest.raises(ValueError, match="stack needs at least one cell"):
        recurrax.stack()
    with pytest.raises(TypeError, match="stack's argument 1 must be a cell.*got a int without init, initial_carry, apply"):
        recurrax.stack(recurrax.gru(2), 3)
    with pytest.raises(TypeError, match=r"deep takes layers; argument 0 is a cell \(GRU\(hidden_size=2\)\).*recurrax\.unidirectional"):
        recurrax.deep(recurrax.gru(2))
    with pytest.raises(TypeError, match="cell must be a cell: an object with init, initial_carry and apply"):
        recurrax.scan(lambda p, c, x: (c, x), None, jnp.ones((2, 2)))


def test_token_helpers_check_ids():
    with pytest.raises(TypeError, match="one_hot takes integer token ids; got dtype float32"):
        recurrax.one_hot(jnp.ones(3), 4)
    with pytest.raises(ValueError, match=r"one_hot: ids must be in \[0, 4\); got values in \[0, 4\]"):
        recurrax.one_hot(jnp.array([0, 4]), 4)
    emb = recurrax.embedding(5, 2)
    p = emb.init(jax.random.key(0))
    with pytest.raises(ValueError, match=r"embedding: ids must be in \[0, 5\)"):
        emb.apply(p, jnp.array([5]))
    # traced out-of-range ids cannot raise: they give NaN, never a wrong row
    assert jnp.isnan(jax.jit(emb.apply)(p, jnp.array([7]))).all()


def test_empty_sequence_is_allowed(lstm):
    cell, params = lstm
    carry, ys = recurrax.scan(cell, params, jnp.zeros((0, 3)), length=0)
    assert ys.shape == (0, 4) and (carry.h == 0).all()


@pytest.mark.parametrize("bad", ["yes", None, 1, jnp.asarray(True)])
def test_reverse_must_be_a_bool(lstm, bad):
    # a truthy string used to run backwards silently; an array failed as "unhashable type"
    cell, params = lstm
    match = r"reverse must be a bool \(True or False\); got"
    with pytest.raises(TypeError, match=match):
        recurrax.scan(cell, params, jnp.ones((5, 3)), reverse=bad)
    with pytest.raises(TypeError, match=match):
        recurrax.manual_bptt(cell, params, jnp.ones((5, 3)), jnp.ones((5, 4)), reverse=bad)
    with pytest.raises(TypeError, match=match):
        recurrax.unidirectional(cell, reverse=bad)


def test_manual_bptt_cotangents_must_match_scans_outputs(lstm):
    # used to fail inside the backward pass (AttributeError, or a promotion error naming neither)
    cell, params = lstm
    xs, ys_bar = jnp.ones((5, 3)), jnp.ones((5, 4))
    with pytest.raises(TypeError, match=r"ys_bar must have the dtype of scan's ys, float32; got int32.*astype\('float32'\)"):
        recurrax.manual_bptt(cell, params, xs, jnp.ones((5, 4), jnp.int32))
    with pytest.raises(ValueError, match=r"carry_bar must have the structure of scan's final carry"):
        recurrax.manual_bptt(cell, params, xs, ys_bar, carry_bar=jnp.ones(4))
    with pytest.raises(ValueError, match=r"carry_bar must have the shape of scan's final carry, \(4,\); got \(2, 4\)"):
        recurrax.manual_bptt(cell, params, xs, ys_bar, carry_bar=recurrax.LSTMCarry(jnp.ones((2, 4)), jnp.ones((2, 4))))
    # a nested list is still taken in ys's dtype
    assert recurrax.manual_bptt(cell, params, xs, [[1.0] * 4] * 5)[1].shape == (5, 3)


def test_deep_and_bidirectional_check_their_tuples():
    # deep zipped a short params / carry tuple with its layers and silently dropped the rest
    net = recurrax.deep(recurrax.unidirectional(recurrax.gru(4)), recurrax.unidirectional(recurrax.rnn(2)))
    params, xs = net.init(jax.random.key(0), 3), jnp.ones((5, 3))
    with pytest.raises(ValueError, match=r"params must be a tuple of 2 parameters, one per layer.*got tuple of length 1"):
        net.apply(params[:1], xs)
    with pytest.raises(ValueError, match=r"carry must be a tuple of 2 carries, one per layer.*got tuple of length 1"):
        net.apply(params, xs, carry=(jnp.zeros(4),))
    bi = recurrax.bidirectional(recurrax.rnn(2))
    with pytest.raises(ValueError, match=r"carry must be a tuple of 2 \(forward, backward\) carries; got ArrayImpl"):
        bi.apply(bi.init(jax.random.key(0), 3), xs, carry=jnp.zeros(2))


def test_a_stack_without_params_names_params():
    # params=None passed the stack's check (taken for an omitted argument) and failed as "not subscriptable"
    cell = recurrax.stack(recurrax.lstm(4), recurrax.rnn(3))
    with pytest.raises(ValueError, match=r"a stack of 2 cells takes a tuple of 2 params; got NoneType"):
        recurrax.scan(cell, None, jnp.ones((5, 3)))
