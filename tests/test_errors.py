"""Bad input raises at trace time with a message naming the argument and the fix."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrax
import recurrax.models
import recurrax.plots


@pytest.fixture
def lstm():
    cell = recurrax.LSTM(4)
    return cell, cell.init(jax.random.key(0), 3)


def test_rank_one_xs(lstm):
    cell, params = lstm
    with pytest.raises(
        ValueError, match=r"xs must be \[T, input_size\].*\[T, \*batch, input_size\].*got shape \(5,\).*xs\[:, None\]"
    ):
        recurrax.scan(cell, params, jnp.ones(5))


@pytest.mark.parametrize("shape", [(5, 7), (5, 2, 7)])
def test_wrong_input_size_names_x_and_input_size(lstm, shape):
    cell, params = lstm
    with pytest.raises(
        ValueError, match=r"x must be \[\.\.\., 3\] \(input_size=3.*LSTM\(hidden_size=4\).*cell\.init\(key, 7\)"
    ):
        recurrax.scan(cell, params, jnp.ones(shape))


def test_wrong_input_size_in_a_stack():
    cell = recurrax.Stack(recurrax.GRU(4), recurrax.RNN(2))
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
    with pytest.raises(
        ValueError,
        match=r"carry leaves must be \(2, 4\) \(\[\*batch, \.\.\.\] with batch \(2,\).*got a leaf of shape \(4,\)",
    ):
        recurrax.scan(cell, params, jnp.ones((5, 2, 3)), cell.initial_carry())
    with pytest.raises(ValueError, match=r"carry leaves must be \(4,\)"):
        recurrax.scan(cell, params, jnp.ones((5, 3)), cell.initial_carry((2,)))


def test_carry_of_the_wrong_structure(lstm):
    cell, params = lstm
    with pytest.raises(ValueError, match=r"carry must have the structure of cell\.initial_carry\(\)"):
        recurrax.scan(cell, params, jnp.ones((5, 3)), jnp.zeros(4))


def test_params_of_another_cell():
    gru = recurrax.GRU(4)
    lstm_params = recurrax.LSTM(4).init(jax.random.key(0), 3)
    with pytest.raises(
        ValueError, match=r"params do not fit GRU\(hidden_size=4\).*U \[input_size, 12\].*init\(key, input_size\)"
    ):
        recurrax.scan(gru, lstm_params, jnp.ones((5, 3)))
    ra = recurrax.GRU(4, reset_after=True)
    with pytest.raises(ValueError, match=r"reset_after=True\): expected GRUResetAfterParams"):
        recurrax.scan(ra, gru.init(jax.random.key(0), 3), jnp.ones((5, 3)))


def test_apply_with_mismatched_batch_dims_does_not_broadcast(lstm):
    cell, params = lstm
    with pytest.raises(ValueError, match=r"batch dimensions of x \(2,\).*cell\.initial_carry\(x\.shape\[:-1\]\)"):
        cell.apply(params, cell.initial_carry(), jnp.ones((2, 3)))


@pytest.mark.parametrize("bad", [0, -2, 2.5, True])
def test_bad_hidden_size(bad):
    with pytest.raises(ValueError, match=r"hidden_size must be a positive int"):
        recurrax.LSTM(bad)


def test_bad_unroll(lstm):
    cell, params = lstm
    with pytest.raises(ValueError, match=r"unroll must be a positive int or a bool; got 0"):
        recurrax.scan(cell, params, jnp.ones((5, 3)), unroll=0)


def test_composition_errors():
    with pytest.raises(ValueError, match="Stack needs at least one cell"):
        recurrax.Stack()
    with pytest.raises(
        TypeError, match="Stack's argument 1 must be a cell.*got a int without init, initial_carry, apply"
    ):
        recurrax.Stack(recurrax.GRU(2), 3)
    with pytest.raises(
        TypeError, match=r"Deep takes layers; argument 0 is a cell \(GRU\(hidden_size=2\)\).*recurrax\.Unidirectional"
    ):
        recurrax.Deep(recurrax.GRU(2))
    with pytest.raises(TypeError, match="cell must be a cell: an object with init, initial_carry and apply"):
        recurrax.scan(lambda p, c, x: (c, x), None, jnp.ones((2, 2)))


def test_token_helpers_check_ids():
    with pytest.raises(TypeError, match="one_hot takes integer token ids; got dtype float32"):
        recurrax.one_hot(jnp.ones(3), 4)
    with pytest.raises(ValueError, match=r"one_hot: ids must be in \[0, 4\); got values in \[0, 4\]"):
        recurrax.one_hot(jnp.array([0, 4]), 4)
    emb = recurrax.Embedding(2)
    p = emb.init(jax.random.key(0), 5)
    with pytest.raises(ValueError, match=r"Embedding: ids must be in \[0, 5\)"):
        emb.apply(p, jnp.array([5]))
    # traced out-of-range ids cannot raise: they give NaN, never a wrong row
    assert jnp.isnan(jax.jit(emb.apply)(p, jnp.array([7]))).all()


def test_empty_sequence_is_allowed(lstm):
    cell, params = lstm
    carry, ys = recurrax.scan(cell, params, jnp.zeros((0, 3)), length=0)
    assert ys.shape == (0, 4) and (carry.h == 0).all()


def test_losses_check_labels_lengths_and_dtypes():
    logits = jnp.log(jnp.array([[0.7, 0.3], [0.2, 0.8]]))
    for bad in (-1, 2):  # -1 used to read the last class's loss
        with pytest.raises(
            ValueError, match=rf"labels must be in \[0, 1\] \(logits has C = 2 classes\); got \[{bad}\]"
        ):
            recurrax.models.cross_entropy(logits, jnp.array([0, bad]))
        # traced labels cannot raise: their loss is NaN, never another class's
        loss = jax.jit(recurrax.models.cross_entropy)(logits, jnp.array([0, bad]))
        assert np.isclose(float(loss[0]), -np.log(0.7), rtol=1e-6) and np.isnan(float(loss[1]))
    with pytest.raises(TypeError, match="logits must be floating point scores; got int32"):
        recurrax.models.cross_entropy(jnp.array([1, 2]), jnp.array(0))
    seq = jnp.zeros((1, 3, 2))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 1\].*got \[5\]"):
        recurrax.models.sequence_cross_entropy(seq, jnp.array([[0, 5, 9]]), jnp.array([2]))  # 9 is padding: ignored
    with pytest.raises(TypeError, match="lengths must be integer numbers of valid steps; got dtype float32"):
        recurrax.models.sequence_cross_entropy(seq, jnp.zeros((1, 3), jnp.int32), jnp.array([1.5]))
    for bad in (-1, 4):
        with pytest.raises(ValueError, match=rf"lengths must be in \[0, 3\] \(T = 3 steps\); got \[{bad}\]"):
            recurrax.models.sequence_cross_entropy(seq, jnp.zeros((1, 3), jnp.int32), jnp.array([bad]))
    with pytest.raises(ValueError, match=r"no samples \(B = 0\)"):
        recurrax.models.sequence_cross_entropy(
            jnp.zeros((0, 3, 2)), jnp.zeros((0, 3), jnp.int32), jnp.zeros(0, jnp.int32)
        )


def test_metrics_check_shapes_dtypes_and_ids():
    with pytest.raises(
        ValueError, match=r"pred, true must have the same shape \(nothing is broadcast\); got pred \(1,\), true \(3,\)"
    ):
        recurrax.models.accuracy(jnp.array([1]), jnp.array([1, 0, 1]))  # used to broadcast to an accuracy of 2.0
    with pytest.raises(ValueError, match=r"pred, true, mask must have the same shape"):
        recurrax.models.accuracy(jnp.array([1, 0]), jnp.array([1, 0]), jnp.array([True]))
    with pytest.raises(
        TypeError, match=r"pred must be integer class ids; got dtype float32\. jnp\.argmax\(logits, -1\)"
    ):
        recurrax.models.accuracy(jnp.array([0.9, 0.1]), jnp.array([1, 0]))
    with pytest.raises(TypeError, match="mask must be a boolean array"):
        recurrax.models.accuracy([1], [1], jnp.array([0.5]))
    with pytest.raises(ValueError, match=r"true must be in \[0, 1\] \(num_classes = 2\); got \[-1, 3\]"):
        recurrax.models.confusion_matrix([0, 1, 1], [-1, 3, 0], 2)  # used to leave both out of the counts
    assert recurrax.models.confusion_matrix([0, 1], [0, 7], 2, mask=[True, False]).tolist() == [[1, 0], [0, 0]]
    with pytest.raises(ValueError, match="num_classes must be a positive int; got 0"):
        recurrax.models.confusion_matrix([0], [0], 0)
    with pytest.raises(ValueError, match=r"cm must be a square \[C, C\] confusion matrix; got shape \(2, 3\)"):
        recurrax.models.per_class_accuracy(jnp.ones((2, 3), jnp.int32))
    with pytest.raises(ValueError, match=r"pred must be in \[0, 1\] \(an index into the 2 names\); got \[-1\]"):
        recurrax.models.predictions_table([-1], [1], ["N", "P"])  # names[-1] used to print "P"
    with pytest.raises(ValueError, match="pred, true must have the same shape"):
        recurrax.models.predictions_table([1, 0, 1], [1], ["N", "P"])  # zip used to drop two rows
    with pytest.raises(ValueError, match="names must name the 3 classes of cm; got 2 names"):
        recurrax.models.confusion_table(np.eye(3, dtype=int), ["a", "b"])  # used to drop a row


def test_models_check_examples_and_special_ids():
    model = recurrax.models.sequence_classifier(recurrax.GRU(3), 2, features=2, pooling="last")
    params = model.init(jax.random.key(0))
    with pytest.raises(
        ValueError, match=r"xs must be one example, \[T, 2\] features; got shape \(4, 3, 2\).*jax\.vmap"
    ):
        model.apply(params, jnp.ones((4, 3, 2)), jnp.array([4, 2, 1]))  # used to give logits [3, 3, 2]
    ed = functools.partial(recurrax.models.encoder_decoder, recurrax.GRU(3), recurrax.GRU(3), 5, 5, embed_dim=2)
    for name, bad in (("sos_id", 5), ("eos_id", -1), ("pad_id", True)):
        ids = {"sos_id": 1, "eos_id": 2, "pad_id": 0, name: bad}
        with pytest.raises(ValueError, match=rf"{name} must be a target token id, an int in \[0, 5\)"):
            ed(**ids)  # an out-of-vocabulary <sos> used to decode NaN logits as token 0
    model = ed(sos_id=1, eos_id=2, pad_id=0)
    params = model.init(jax.random.key(0))
    for bad in (0, -1, 2.0):
        with pytest.raises(ValueError, match=rf"max_len must be a positive int; got {bad}"):
            model.generate(params, jnp.array([3, 4]), max_len=bad)
    with pytest.raises(ValueError, match=r"src must be one example, \[S\] source token ids in \[0, 5\)"):
        model.generate(params, jnp.array([[3, 4]]), max_len=2)


def test_deep_takes_one_params_and_carry_entry_per_layer():
    # zip() used to drop the layers without an entry: a 2-layer net ran one layer
    net = recurrax.Deep(recurrax.Unidirectional(recurrax.GRU(4)), recurrax.Unidirectional(recurrax.RNN(2)))
    params, xs = net.init(jax.random.key(0), 3), jnp.ones((5, 3))
    for bad, got in [(params[:1], "tuple of length 1"), (params + params[:1], "tuple of length 3")]:
        with pytest.raises(
            ValueError, match=rf"a deep layer of 2 layers takes params as a tuple of 2, one per layer; got {got}"
        ):
            net.apply(bad, xs)
    for bad, got in [((None,), "tuple of length 1"), (jnp.zeros((2, 4)), "ArrayImpl")]:
        with pytest.raises(ValueError, match=rf"takes carry as a tuple of 2, one per layer; got {got}"):
            net.apply(params, xs, carry=bad)


def test_bidirectional_takes_pairs():
    # unpacking used to split a [2, H] array into the two directions' carries silently
    layer = recurrax.Bidirectional(recurrax.GRU(4))
    params, xs = layer.init(jax.random.key(0), 3), jnp.ones((5, 3))
    with pytest.raises(
        ValueError, match=r"a bidirectional layer takes carry as a tuple of 2, one per direction; got ArrayImpl"
    ):
        layer.apply(params, xs, carry=jnp.zeros((2, 4)))
    with pytest.raises(
        ValueError, match=r"takes params as a tuple of 2, one per direction; got CellParams of length 9"
    ):
        layer.apply(params.forward, xs)
    _, ys = layer.apply(tuple(params), xs)  # a plain pair, as a checkpoint may restore it
    assert ys.shape == (5, 8)


def test_stack_takes_one_entry_per_cell():
    cell = recurrax.Stack(recurrax.GRU(4), recurrax.RNN(2))
    params = cell.init(jax.random.key(0), 3)
    with pytest.raises(
        ValueError, match=r"a stack of 2 cells takes params as a tuple of 2, one per cell; got tuple of length 1"
    ):
        recurrax.scan(cell, params[:1], jnp.ones((5, 3)))


def test_traced_wide_length_is_clipped_not_wrapped(lstm, x64):
    # int32(2**32 + 3) == 3: casting before clipping ran 3 steps instead of all 5
    cell, params = lstm
    run = jax.jit(lambda n: recurrax.scan(cell, params, jnp.ones((5, 3), jnp.float32), length=n)[1])
    full = run(jnp.int32(5))
    assert (run(jnp.int64(2**32 + 3)) == full).all() and (run(jnp.uint32(2**32 - 1)) == full).all()
    assert (run(jnp.int64(-2**32 + 3)) == 0).all()


def test_traced_negative_ids_give_nan_not_the_last_row():
    emb = recurrax.Embedding(2)
    p = emb.init(jax.random.key(0), 5)
    assert jnp.isnan(jax.jit(emb.apply)(p, jnp.array([-1]))).all()


def test_manual_bptt_checks_the_cotangents(lstm):
    cell, params = lstm
    xs, ys_bar = jnp.ones((5, 3)), jnp.ones((5, 4))
    with pytest.raises(TypeError, match=r"ys_bar must have the dtype of scan's ys, float32\[5, 4\]; got int32\[5, 4\]"):
        recurrax.manual_bptt(cell, params, xs, ys_bar.astype(jnp.int32))
    with pytest.raises(ValueError, match=r"carry_bar must have the shape of scan's final carry, LSTMCarry"):
        recurrax.manual_bptt(cell, params, xs, ys_bar, carry_bar=jnp.ones(4))
    batch = recurrax.LSTMCarry(jnp.ones(4), jnp.ones(4))  # no batch dimension: must not broadcast
    with pytest.raises(ValueError, match=r"carry_bar must have the shape of scan's final carry"):
        recurrax.manual_bptt(cell, params, jnp.ones((5, 2, 3)), jnp.ones((5, 2, 4)), carry_bar=batch)


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
        recurrax.Unidirectional(cell, reverse=bad)


def test_a_stack_without_params_names_params():
    # params=None passed the stack's check (taken for an omitted argument) and failed as "not subscriptable"
    cell = recurrax.Stack(recurrax.LSTM(4), recurrax.RNN(3))
    with pytest.raises(
        ValueError, match=r"a stack of 2 cells takes params as a tuple of 2, one per cell; got NoneType"
    ):
        recurrax.scan(cell, None, jnp.ones((5, 3)))


def test_gradient_diagnostics_refuse_what_would_show_nothing():
    # T=0 failed as "integer modulo by zero"; empty curves wrote an empty figure
    cell = recurrax.RNN(3)
    params = cell.init(jax.random.key(0), 2)
    with pytest.raises(ValueError, match="gradient_norms needs at least one step"):
        recurrax.gradient_norms(cell, params, jnp.ones((0, 2)))
    with pytest.raises(ValueError, match="curves is empty"):
        recurrax.plots.plot_gradient_flow({}, "unused.png")
