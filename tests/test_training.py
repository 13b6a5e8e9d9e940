"""Losses, metrics, models, training, checkpoints, data parallelism, and the tasks."""

import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import recurrax
import recurrax.models
import recurrax.train
from recurrax import tasks
from recurrax._apps import _cli, _demo
from tests.helpers import leaves_close


def test_cross_entropy_is_minus_log_of_the_true_class_probability():
    # the lecture: y = [1, 0], y_hat = [0.7, 0.3]  ->  L = -log 0.7
    logits = jnp.log(jnp.array([0.7, 0.3]))
    assert np.isclose(float(recurrax.models.cross_entropy(logits, jnp.array(0))), -np.log(0.7), rtol=1e-6)
    # softmax-invariant: any shift of the logits gives the same loss
    assert np.isclose(float(recurrax.models.cross_entropy(logits + 5.0, jnp.array(0))), -np.log(0.7), rtol=1e-6)
    batch = recurrax.models.cross_entropy(jnp.log(jnp.array([[0.7, 0.3], [0.2, 0.8]])), jnp.array([0, 0]))
    np.testing.assert_allclose(batch, [-np.log(0.7), -np.log(0.2)], rtol=1e-6)
    with pytest.raises(TypeError, match="labels must be integer"):
        recurrax.models.cross_entropy(logits, jnp.array(0.0))


def test_sequence_loss_sums_over_time_ignores_padding_and_averages_over_samples():
    p = np.array([[[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]],
                  [[0.9, 0.1], [0.6, 0.4], [0.1, 0.9]]])
    labels = jnp.array([[0, 1, 1], [1, 0, 1]])
    lengths = jnp.array([2, 3])
    expected = ((-np.log(0.7) - np.log(0.8)) + (-np.log(0.1) - np.log(0.6) - np.log(0.9))) / 2
    got = recurrax.models.sequence_cross_entropy(jnp.log(jnp.asarray(p)), labels, lengths)
    assert np.isclose(float(got), expected, rtol=1e-6)
    # garbage in the padding (even a label out of range) changes nothing
    noisy = recurrax.models.sequence_cross_entropy(jnp.log(jnp.asarray(p)), labels.at[0, 2].set(7), lengths)
    assert float(noisy) == float(got)


def test_metrics_against_hand_computed_tables():
    # the lecture's classification table (its fourth row, 0 vs 0, is marked "incorrect" there: a typo)
    pred, true = [1, 0, 1, 0, 1, 0], [1, 0, 0, 0, 1, 1]
    assert np.isclose(float(recurrax.models.accuracy(pred, true)), 4 / 6)
    assert np.asarray(recurrax.models.confusion_matrix(pred, true, 2)).tolist() == [[2, 1], [1, 2]]
    table = recurrax.models.predictions_table(pred, true, ["N", "P"])
    assert table.count("incorrect") == 2 and table.count(" correct") == 4
    # labelling: 3 classes, padded [B, T] with a mask
    pred = jnp.array([[0, 1, 2, 2], [1, 1, 0, 0]])
    true = jnp.array([[0, 1, 1, 2], [1, 2, 0, 1]])
    mask = jnp.array([[True, True, True, True], [True, True, True, False]])
    cm = np.asarray(recurrax.models.confusion_matrix(pred, true, 3, mask))
    assert cm.tolist() == [[2, 0, 0], [0, 2, 1], [0, 1, 1]]
    assert np.isclose(float(recurrax.models.accuracy(pred, true, mask)), 5 / 7)
    np.testing.assert_allclose(recurrax.models.per_class_accuracy(cm), [1.0, 2 / 3, 0.5])
    assert np.isnan(np.asarray(recurrax.models.per_class_accuracy(np.zeros((2, 2), int)))).all()
    text = recurrax.models.confusion_table(cm, ["PRON", "VERB", "NOUN"])
    assert "overall accuracy 0.7143 (5/7)" in text and "0.667" in text
    # batched with vmap: one confusion matrix per model of an ensemble
    cms = jax.vmap(lambda p: recurrax.models.confusion_matrix(p, true, 3, mask))(jnp.stack([pred, true]))
    assert np.asarray(cms[1]).trace() == 7


def test_classifier_pooling_and_tagger_semantics():
    cell = recurrax.LSTM(4)
    model = recurrax.models.sequence_classifier(cell, 3, features=2, pooling="last")
    params = model.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (6, 2))
    carry, _ = recurrax.scan(cell, params["encoder"], xs, length=4)
    np.testing.assert_allclose(
        model.apply(params, xs, 4), carry.h @ params["readout"].V + params["readout"].c, rtol=1e-5
    )
    mean = recurrax.models.sequence_classifier(cell, 3, features=2, pooling="mean")
    _, ys = recurrax.scan(cell, params["encoder"], xs, length=4)
    np.testing.assert_allclose(
        mean.apply(params, xs, 4), ys[:4].mean(0) @ params["readout"].V + params["readout"].c, rtol=1e-5
    )
    tagger = recurrax.models.sequence_tagger(recurrax.Deep(recurrax.Bidirectional(recurrax.GRU(3)),
                                                    recurrax.Unidirectional(recurrax.RNN(5))), 7, vocab_size=11)
    tp = tagger.init(jax.random.key(0))
    assert tagger.apply(tp, jnp.array([1, 5, 9, 2]), 3).shape == (4, 7)
    with pytest.raises(ValueError, match="exactly one of features= .* and vocab_size="):
        recurrax.models.sequence_tagger(cell, 3)
    with pytest.raises(ValueError, match="pooling must be one of"):
        recurrax.models.sequence_classifier(cell, 3, features=2, pooling="first")


def test_greedy_decoding_stops_at_eos():
    sos, eos, pad = 1, 2, 3
    model = recurrax.models.encoder_decoder(
        recurrax.GRU(4), recurrax.GRU(4), 6, 6, embed_dim=3, sos_id=sos, eos_id=eos, pad_id=pad
    )
    params = model.init(jax.random.key(0))
    src = jnp.array([4, 5, 4])

    def biased(token):  # a readout that always prefers `token`
        r = params["readout"]
        return {**params, "readout": r._replace(V=0 * r.V, c=jnp.zeros(6).at[token].set(10.0))}

    tokens, n = model.generate(biased(eos), src, max_len=5)
    assert tokens.tolist() == [eos, pad, pad, pad, pad] and int(n) == 0
    tokens, n = model.generate(biased(5), src, max_len=5)
    assert tokens.tolist() == [5] * 5 and int(n) == 5  # never <eos>: bounded by max_len
    # a readout that says 4 until the decoder has read a 4, then <eos>: [4, eos, pad...]
    r = params["readout"]
    emb = params["tgt_embed"].E
    p = {**params, "tgt_embed": params["tgt_embed"]._replace(E=emb.at[4].set(50.0)),
         "readout": r._replace(V=jnp.zeros_like(r.V).at[:, eos].set(1.0), c=jnp.zeros(6).at[4].set(0.5))}
    p["decoder"] = p["decoder"]._replace(U=jnp.ones_like(p["decoder"].U), W=0 * p["decoder"].W)
    tokens, n = model.generate(p, src, max_len=5)
    assert int(n) == tokens.tolist().index(eos) and all(t == pad for t in tokens.tolist()[int(n) + 1:])
    with pytest.raises(ValueError, match="same kind and hidden size"):
        recurrax.models.encoder_decoder(
            recurrax.LSTM(4), recurrax.GRU(4), 6, 6, embed_dim=3, sos_id=1, eos_id=2, pad_id=3
        )


def _halved_by_an_empty_example(loss, params, batch, empty):
    """``loss``'s gradient on ``[x, empty]`` is finite and half that on ``[x, x]``: the empty
    example (all padding, NaN where features or out-of-vocabulary ids where tokens) adds nothing."""
    pair = lambda second: jax.tree.map(lambda a, b: jnp.stack([a, b]), batch, second)
    grad = jax.jit(jax.grad(lambda p, b: loss(p, *b)))
    with_empty = grad(params, pair(empty))
    assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(with_empty))
    leaves_close(with_empty, jax.tree.map(lambda a: a / 2, grad(params, pair(batch))), atol=1e-6)


@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
def test_an_empty_nan_padded_example_leaves_the_classifier_gradients_alone(pooling):
    # the loss weights an empty example 0 and sums over the batch
    model = recurrax.models.sequence_classifier(recurrax.GRU(3), 2, features=2, pooling=pooling)
    x = jnp.full((4, 2), jnp.nan).at[:2].set(jax.random.normal(jax.random.key(1), (2, 2)))

    def loss(p, xs, n, y):
        ce = recurrax.models.cross_entropy(jax.vmap(model.apply, in_axes=(None, 0, 0))(p, xs, n), y)
        return jnp.sum(jnp.where(n > 0, ce, 0.0))

    # int32 lengths, not weakly typed Python ints: the mean's division must not need a promotion
    example, empty = (x, jnp.int32(2), jnp.int32(1)), (jnp.full((4, 2), jnp.nan), jnp.int32(0), jnp.int32(0))
    _halved_by_an_empty_example(loss, model.init(jax.random.key(0)), example, empty)


def test_empty_examples_and_nan_padding_leave_the_sequence_loss_gradients_alone():
    """sequence_cross_entropy divides by B, empty samples included, hence the halving."""
    tagger = recurrax.models.sequence_tagger(recurrax.GRU(3), 4, features=2)

    def tag_loss(p, xs, n, y):
        return recurrax.models.sequence_cross_entropy(jax.vmap(tagger.apply, in_axes=(None, 0, 0))(p, xs, n), y, n)

    example = (jnp.full((4, 2), jnp.nan).at[:3].set(1.0), jnp.array(3), jnp.array([1, 2, 3, -5]))
    empty = (jnp.full((4, 2), jnp.nan), jnp.array(0), jnp.array([9, 9, 9, 9]))  # padding labels are never read
    _halved_by_an_empty_example(tag_loss, tagger.init(jax.random.key(0)), example, empty)
    # NaN and inf logits in the padding reach neither the loss nor its gradient
    logits = jnp.zeros((2, 3, 2)).at[0, 2].set(jnp.nan).at[1].set(jnp.inf)
    g = jax.jit(jax.grad(recurrax.models.sequence_cross_entropy))(
        logits, jnp.zeros((2, 3), jnp.int32), jnp.array([2, 0])
    )
    assert np.isfinite(np.asarray(g)).all() and (g[0, 2] == 0).all() and (g[1] == 0).all()
    # the encoder-decoder: an empty source and target whose padding ids (9) are outside the vocabulary
    model = recurrax.models.encoder_decoder(
        recurrax.GRU(3), recurrax.GRU(3), 5, 5, embed_dim=2, sos_id=1, eos_id=2, pad_id=0
    )

    def seq2seq_loss(p, s, sn, t, tn):
        out = jax.vmap(lambda s, sn, t, tn: model.apply(p, s, t[:-1], src_length=sn, tgt_length=tn))(s, sn, t, tn)
        return recurrax.models.sequence_cross_entropy(out, t[:, 1:], tn)

    example = (jnp.array([3, 4, 9]), jnp.array(2), jnp.array([1, 3, 4, 2]), jnp.array(3))
    empty = (jnp.array([9, 9, 9]), jnp.array(0), jnp.array([9, 9, 9, 9]), jnp.array(0))
    _halved_by_an_empty_example(seq2seq_loss, model.init(jax.random.key(0)), example, empty)


def test_models_pool_and_decode_without_silent_garbage():
    model = recurrax.models.sequence_classifier(recurrax.GRU(3), 2, features=2, pooling="mean")
    params = model.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (5, 2))
    # a traced length past T is clipped by the encoder; the mean divides by the clipped one too
    apply = jax.jit(model.apply)
    np.testing.assert_allclose(apply(params, xs, 9), apply(params, xs, 5), rtol=1e-6)
    for pooling in ("last", "max"):  # an empty sequence pools to the zero state: logits = c
        m = recurrax.models.sequence_classifier(recurrax.GRU(3), 2, features=2, pooling=pooling)
        np.testing.assert_array_equal(m.apply(params, jnp.zeros((0, 2))), params["readout"].c)
    # 1-hot inputs: a traced id outside the vocabulary gives NaN logits, not a zero input's
    onehot = recurrax.models.sequence_classifier(recurrax.GRU(3), 2, vocab_size=4)
    p = onehot.init(jax.random.key(0))
    assert np.isnan(np.asarray(jax.jit(onehot.apply)(p, jnp.array([1, 7])))).all()
    # greedy decoding from a NaN carry (a traced source id outside the vocabulary) emits -1
    ed = recurrax.models.encoder_decoder(
        recurrax.GRU(3), recurrax.GRU(3), 5, 5, embed_dim=2, sos_id=1, eos_id=2, pad_id=0
    )
    ep = ed.init(jax.random.key(0))
    tokens, n = jax.jit(lambda s: ed.generate(ep, s, max_len=3))(jnp.array([3, 9]))
    assert tokens.tolist() == [-1, -1, -1] and int(n) == 3


def test_metrics_of_nothing_are_nan_and_bad_ids_are_marked():
    assert np.isnan(float(recurrax.models.accuracy([], [])))
    assert np.isnan(float(recurrax.models.accuracy([1, 0], [1, 0], mask=[False, False])))
    # a traced id outside [0, num_classes) cannot raise: the whole matrix is -1, not a short count
    cm = jax.jit(lambda p: recurrax.models.confusion_matrix(p, jnp.array([0, 1, 1]), 2))(jnp.array([0, 1, 2]))
    assert (np.asarray(cm) == -1).all() and np.isnan(np.asarray(recurrax.models.per_class_accuracy(cm))).all()
    with pytest.raises(ValueError, match="cm has negative counts"):
        recurrax.models.confusion_table(cm, ["a", "b"])
    assert "overall accuracy - (0/0)" in recurrax.models.confusion_table(np.zeros((2, 2), int), ["a", "b"])


def test_checkpoint_round_trip_is_exact(tmp_path):
    model = recurrax.models.sequence_tagger(recurrax.Bidirectional(recurrax.LSTM(3)), 4, vocab_size=9, embed_dim=5)
    params = model.init(jax.random.key(0))
    opt = optax.adam(1e-3)
    state = {"params": params, "opt_state": opt.init(params), "step": np.int64(7),
             "half": jnp.ones(3, jnp.bfloat16)}
    path = recurrax.train.save_checkpoint(tmp_path / "c", state)
    assert path == str(tmp_path / "c") and os.path.isdir(path)
    for like in (state, {**state, "params": jax.eval_shape(model.init, jax.random.key(0))}):  # concrete or abstract
        back = recurrax.train.load_checkpoint(path, like)
        assert jax.tree.structure(back) == jax.tree.structure(state)
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(back)):
            assert np.asarray(a).dtype == np.asarray(b).dtype and np.array_equal(np.asarray(a), np.asarray(b))
    assert isinstance(recurrax.train.load_checkpoint(path, state)["step"], np.ndarray)  # NumPy in, NumPy out
    with pytest.raises(ValueError, match="does not match the template: the checkpoint has leaves the template lacks"):
        recurrax.train.load_checkpoint(path, {"params": params})
    with pytest.raises(ValueError, match=r"E is float32\[9, 5\] in the checkpoint, float32\[9, 6\] in the template"):
        bad = jax.tree.map(lambda a: a, state)
        bad["params"]["inputs"] = bad["params"]["inputs"]._replace(E=jnp.zeros((9, 6)))
        recurrax.train.load_checkpoint(path, bad)


def _adding_setup(T=8, H=8):
    model = recurrax.models.sequence_classifier(recurrax.GRU(H), 1, features=2)
    params = model.init(jax.random.key(0))
    loss = lambda p, b: jnp.mean((jax.vmap(lambda x: model.apply(p, x)[0])(b[0]) - b[1]) ** 2)
    return params, loss


def test_fit_is_deterministic(optax_promotion):
    params, loss = _adding_setup()
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
    step = recurrax.train.make_train_step(loss, opt)
    batches = lambda k: tasks.adding_problem(k, 16, 8)
    full = recurrax.train.fit(step, params, opt.init(params), batches, steps=20, seed=3, progress=False)
    again = recurrax.train.fit(step, params, opt.init(params), batches, steps=20, seed=3, progress=False)
    leaves_close(full.params, again.params, atol=0)
    assert full.history == [{**again.history[0], "seconds": full.history[0]["seconds"]}]
    other = recurrax.train.fit(step, params, opt.init(params), batches, steps=20, seed=4, progress=False)
    assert not np.array_equal(np.asarray(other.params["readout"].V), np.asarray(full.params["readout"].V))


def test_data_parallel_on_four_cpu_devices_equals_one_device(tmp_path):
    script = textwrap.dedent("""
        import json, jax, jax.numpy as jnp, numpy as np, optax
        import recurrax, recurrax.models, recurrax.tasks, recurrax.train
        from jax.sharding import Mesh
        assert len(jax.devices()) == 4, jax.devices()
        model = recurrax.models.sequence_classifier(recurrax.LSTM(8), 1, features=2)
        params = model.init(jax.random.key(0))
        loss = lambda p, b: jnp.mean((jax.vmap(lambda x: model.apply(p, x)[0])(b[0]) - b[1]) ** 2)
        opt = optax.adam(1e-2)
        batch = recurrax.tasks.adding_problem(jax.random.key(1), 32, 10)
        single = recurrax.train.make_train_step(loss, opt)
        multi = recurrax.train.make_train_step(loss, opt, mesh=Mesh(np.array(jax.devices()), ("data",)))
        out = {}
        for name, step in [("single", single), ("multi", multi)]:
            p, s = params, opt.init(params)
            losses = []
            for _ in range(5):
                p, s, l = step(p, s, batch)
                losses.append(float(l))
            out[name] = {"losses": losses, "V": np.asarray(p["readout"].V).ravel().tolist()}
        out["sharded"] = str(multi(params, opt.init(params), batch)[0]["readout"].V.sharding)
        print(json.dumps(out))
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    import json
    out = json.loads(run.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(out["multi"]["losses"], out["single"]["losses"], rtol=1e-5)
    np.testing.assert_allclose(out["multi"]["V"], out["single"]["V"], rtol=1e-4, atol=1e-6)


def test_train_step_rejects_bad_mesh_and_uneven_batches():
    params, loss = _adding_setup()
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("model",))
    with pytest.raises(ValueError, match="axis named 'data'"):
        recurrax.train.make_train_step(loss, optax.sgd(0.1), mesh=mesh)


def test_adding_problem_has_the_documented_baseline():
    xs, y = tasks.adding_problem(jax.random.key(0), 20000, 30)
    assert xs.shape == (20000, 30, 2)
    marks = np.asarray(xs[..., 1])
    assert (marks.sum(1) == 2).all() and (marks[:, :15].sum(1) == 1).all()
    assert abs(float(jnp.mean((1.0 - y) ** 2)) - 1 / 6) < 0.005  # the constant predictor's MSE


def test_copy_memory_layout():
    inputs, targets = tasks.copy_memory(jax.random.key(0), 3, 5, length=4)
    assert inputs.shape == targets.shape == (3, 13)
    np.testing.assert_array_equal(targets[:, -4:], inputs[:, :4])
    assert (np.asarray(inputs[:, 8]) == 9).all() and (np.asarray(targets[:, :9]) == 0).all()
    with pytest.raises(ValueError, match="num_symbols must be an int >= 1; got 0"):
        tasks.copy_memory(jax.random.key(0), 3, 5, num_symbols=0)  # its symbols would be the delimiter


def test_text_tasks_are_deterministic_and_context_dependent():
    s1, y1 = tasks.polarity_task(5, 300)
    s2, y2 = tasks.polarity_task(5, 300)
    assert s1 == s2 and (y1 == y2).all()
    for words, label in zip(s1, y1):
        adj = words[-1]
        assert label == ((adj in tasks._synthetic._POSITIVE) != ("not" in words[-4:]))
    words, tags = tasks.bank_tagging_task(jax.random.key(0), 300)
    seen = {}
    for ws, ts in zip(words, tags):
        for i, (w, t) in enumerate(zip(ws, ts)):
            if w in tasks._synthetic._AMBIGUOUS:
                seen.setdefault(w, set()).add(t)
                assert t == ("NOUN" if ws[i - 1] in tasks._synthetic._DETS else "VERB")
    assert all(v == {"NOUN", "VERB"} for v in seen.values())
    src, tgt, vals = tasks.number_words_task(0, 50)
    assert all("".join(t) == str(v) for t, v in zip(tgt, vals))
    with pytest.raises(ValueError, match=r"max_value must be an int in \[0, 999\]"):
        tasks.number_words_task(0, 5, max_value=1000)  # would draw 1000, which has no words here
    with pytest.raises(ValueError, match="n must be an int >= 0; got -1"):
        tasks.polarity_task(0, -1)
    assert tasks.number_to_words(100) == ["one", "hundred"] and tasks.number_to_words(0) == ["zero"]


def test_small_lstm_learns_the_adding_problem_at_T20(optax_promotion):
    """Seeded: H=32, 600 Adam steps at 3e-3, batch 64. Measured MSE 0.019; the bar is 0.05 (baseline 0.167)."""
    result = _demo.run_adding("lstm", seq_len=20, steps=600, hidden=32, lr=3e-3, seed=0, progress=False)
    assert result["test_mse"] < 0.05, result["curve"]


def test_cli_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "recurrax", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for command in ["demo", "adding", "classify", "tag", "generate", "gradcheck", "gradflow"]:
        assert command in out.stdout


class Started(Exception):
    """Raised by the stand-ins of the training functions: the command got past its checks."""


@pytest.fixture
def no_training(monkeypatch):
    """Every command's work replaced by a stand-in that raises Started."""
    def started(*args, **kwargs):
        raise Started

    for name in ["demo", "run_adding", "run_classify", "run_tag", "run_generate", "run_gradflow"]:
        monkeypatch.setattr(_demo, name, started)


@pytest.mark.parametrize("argv", [
    ["adding", "--steps", "0"], ["demo", "--steps", "-5"], ["classify", "--hidden", "0"], ["tag", "--hidden", "x"],
    ["generate", "--seed", "-1"], ["adding", "--seed", str(2**32)], ["demo", "--seq-len", "1"],
    ["adding", "--lr", "0"], ["adding", "--lr", "-0.001"], ["adding", "--lr", "nan"], ["gradcheck", "--seq-len", "1"],
    ["gradcheck", "--hidden", "0"], ["gradflow", "--seq-len", "0"], ["gradflow", "--hidden", "-1"],
])
def test_cli_rejects_bad_numbers_as_usage_errors(argv, capsys, no_training):
    with pytest.raises(SystemExit) as exit:
        _cli.main(argv)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and f"{argv[0]}: error: argument {argv[1]}: " in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["demo", "adding", "classify", "tag", "generate", "gradflow"])
def test_cli_rejects_an_unwritable_output_before_training(command, tmp_path, capsys, no_training):
    regular = tmp_path / "file"
    regular.write_text("")
    option, target = ("--plot", regular / "g.png") if command == "gradflow" else ("--out", regular / "runs")
    with pytest.raises(SystemExit) as exit:
        _cli.main([command, option, str(target)])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and f"argument {option}: cannot write to the directory" in err
    # a writable place passes the checks (and is created), and '' writes no checkpoints
    good = tmp_path / "new" / "g.png" if command == "gradflow" else tmp_path / "new"
    with pytest.raises(Started):
        _cli.main([command, option, str(good)])
    assert (tmp_path / "new").is_dir()
    if command != "demo":
        with pytest.raises(Started):
            _cli.main([command, option, ""])


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes to read-only directories")
def test_cli_rejects_a_read_only_output_directory(tmp_path, capsys, no_training):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(SystemExit):
            _cli.main(["classify", "--out", str(tmp_path)])
    finally:
        tmp_path.chmod(0o700)
    assert "argument --out: cannot write to the directory" in capsys.readouterr().err


def test_cli_usage_errors_for_outputs_that_are_not_directories(tmp_path, capsys, no_training):
    for argv, message in [(["demo", "--out", ""], "argument --out: demo writes its plots there"),
                          (["gradflow", "--plot", str(tmp_path)], "argument --plot: .* is a directory"),
                          (["gradcheck", "--hidden", "50"], 'argument --mode: mode="entries" would perturb')]:
        with pytest.raises(SystemExit) as exit:
            _cli.main(argv)
        assert exit.value.code == 2
        assert re.search(message, capsys.readouterr().err)


@pytest.mark.slow
def test_the_demo_meets_its_targets(tmp_path, optax_promotion):
    """The main job with its defaults: LSTM and GRU below 0.01 on the adding problem at T=50."""
    results = _demo.demo(out=str(tmp_path), progress=False)
    mse = {r["cell"]: r["test_mse"] for r in results["adding"]}
    assert mse["lstm"] < 0.01 and mse["gru"] < 0.01
    assert results["classify"]["accuracy"] > 0.95 and results["tag"]["accuracy"] > 0.95
    assert results["generate"]["exact_match"] > 0.9


def test_fit_progress_says_when_the_first_step_compiles(capsys):
    """While the first step compiles the bar shows why it sits at 0; the label goes afterwards."""
    opt = optax.sgd(0.1)
    step = recurrax.train.make_train_step(lambda p, b: jnp.sum((p - b) ** 2), opt)
    recurrax.train.fit(
        step, jnp.float32(0.0), opt.init(jnp.float32(0.0)), lambda k: jnp.float32(2.0), steps=3, progress=True
    )
    err = capsys.readouterr().err
    before, after = err.split("compiling the training step", 1)
    assert "0/3" in before
    # the label is cleared as soon as the first step has compiled (a refresh without it)
    assert "/3" in after and "compiling" not in after


def test_the_demo_writes_every_plot_it_announces(tmp_path, monkeypatch, capsys):
    """The learning curves, both confusion matrices and the gradient-flow figure (the training
    runs replaced by small stand-ins of their results; the gradient flow runs, small)."""
    pytest.importorskip("matplotlib")
    adding = lambda name, **kw: {"cell": name, "seq_len": 50, "steps": 2, "test_mse": 0.1, "seconds": 0.0,  # noqa: E731
                                 "curve": [(1, 0.2), (2, 0.1)]}
    cm2 = np.array([[3, 1], [0, 4]])
    monkeypatch.setattr(_demo, "run_adding", adding)
    monkeypatch.setattr(_demo, "run_classify", lambda **kw: {"accuracy": 0.9, "cm": cm2, "negated_accuracy": 0.8,
                                                             "examples": [("not bad", 1, 1)], "pred": np.array([1]),
                                                             "true": np.array([1])})
    monkeypatch.setattr(_demo, "run_tag", lambda **kw: {"accuracy": 0.9, "ambiguous_accuracy": 0.8, "cm": cm2,
                                                        "tags": ["NOUN", "VERB"]})
    monkeypatch.setattr(_demo, "run_generate", lambda **kw: {"exact_match": 1.0, "examples": [("one", "1", "1")]})
    real_flow = _demo.run_gradflow
    monkeypatch.setattr(_demo, "run_gradflow", lambda **kw: real_flow(**{**kw, "seq_len": 6, "hidden": 3}))
    _demo.demo(out=str(tmp_path), progress=False)
    out = capsys.readouterr().out
    for name in ["adding_curves.png", "classify_confusion.png", "tagging_confusion.png", "gradient_flow.png"]:
        assert (tmp_path / name).stat().st_size > 1000, name
        assert name in out


@pytest.mark.parametrize("missing, extra", [("optax", "train"), ("matplotlib.pyplot", "plot")])
def test_cli_names_the_extra_a_missing_dependency_comes_from(missing, extra, monkeypatch, capsys, tmp_path):
    def run_classify(*args, **kwargs):
        raise ModuleNotFoundError(f"No module named {missing!r}", name=missing)

    monkeypatch.setattr(_demo, "run_classify", run_classify)
    assert _cli.main(["classify", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"needs {missing}" in err and 'pip install "recurrax[demo]"' in err and f"recurrax[{extra}]" in err


def test_cli_does_not_hide_other_missing_modules(monkeypatch, tmp_path):
    def run_classify(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'nothere'", name="nothere")

    monkeypatch.setattr(_demo, "run_classify", run_classify)
    with pytest.raises(ModuleNotFoundError, match="nothere"):
        _cli.main(["classify", "--out", str(tmp_path)])
