"""The main job: the lecture end to end on tasks generated from a seed (``python -m recurrax demo``).

Each ``run_*`` function trains, evaluates, prints the lecture's tables and returns its
numbers, so the command line, the README and the tests share one implementation.
"""

from __future__ import annotations

import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import recurrax
import recurrax.models
import recurrax.plots
import recurrax.train
from recurrax import data, tasks
from recurrax._apps._plots import figure

ADDING_BASELINE = 1.0 / 6.0  # Var(u1 + u2) for u ~ U[0, 1]: the constant predictor's MSE


def make_cell(name: str, hidden: int):
    """The demo's cells; the LSTM's forget-gate bias starts at 1 (needed for long lags)."""
    cells = {"rnn": lambda: recurrax.RNN(hidden), "lstm": lambda: recurrax.LSTM(hidden, forget_bias=1.0),
             "gru": lambda: recurrax.GRU(hidden)}
    if name not in cells:
        raise ValueError(f"cell must be one of {sorted(cells)}; got {name!r}.")
    return cells[name]()


def optimizer(lr: float = 1e-3) -> optax.GradientTransformation:
    """Adam with gradient clipping at global norm 1 (the fix for exploding gradients)."""
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr))


def _checkpoint(out: str | None, name: str) -> str | None:
    """fit's checkpoint directory ``out/name``, emptied: a demo starts fresh rather than resuming."""
    if not out:
        return None
    path = os.path.join(out, name)
    if os.path.isdir(path):
        shutil.rmtree(path)
    return path


def run_adding(cell_name: str, *, seq_len: int = 50, steps: int = 2000, hidden: int = 128, batch: int = 64,
               lr: float = 2e-3, seed: int = 0, out: str | None = None, progress: bool | None = None) -> dict:
    """Train ``cell_name`` on the adding problem; return test MSE and the learning curve."""
    model = recurrax.models.sequence_classifier(make_cell(cell_name, hidden), 1, features=2)
    key = jax.random.key(seed)
    params = model.init(key)

    def loss_fn(p, b):
        xs, y = b
        return jnp.mean((jax.vmap(lambda x: model.apply(p, x)[0])(xs) - y) ** 2)

    test = tasks.adding_problem(jax.random.fold_in(key, 10**6), 2000, seq_len)
    test_mse = jax.jit(lambda p: loss_fn(p, test))
    opt = optimizer(lr)
    t0 = time.perf_counter()
    result = recurrax.train.fit(recurrax.train.make_train_step(loss_fn, opt), params, opt.init(params),
                          lambda k: tasks.adding_problem(k, batch, seq_len), steps=steps, seed=seed,
                          eval_fn=lambda p: {"test_mse": test_mse(p)}, eval_every=max(steps // 10, 1),
                          checkpoint=_checkpoint(out, f"adding_{cell_name}_T{seq_len}"),
                          progress=progress, desc=f"adding {cell_name} T={seq_len}")
    return {"cell": cell_name, "seq_len": seq_len, "steps": steps, "test_mse": result.history[-1]["test_mse"],
            "seconds": time.perf_counter() - t0, "curve": [(r["step"], r["test_mse"]) for r in result.history]}


def adding_table(results: list) -> str:
    lines = [f"{'cell':6s} {'T':>5s} {'steps':>6s} {'test MSE':>9s} {'baseline':>9s} {'time':>7s}",
             *(f"{r['cell']:6s} {r['seq_len']:5d} {r['steps']:6d} {r['test_mse']:9.4f} {ADDING_BASELINE:9.3f} "
               f"{r['seconds']:6.0f}s" for r in results)]
    return "\n".join(lines)


def _batches(arrays, batch, key):
    """A random batch of ``batch`` rows of every array (with replacement across steps)."""
    idx = jax.random.randint(key, (batch,), 0, len(arrays[0]))
    return tuple(a[idx] for a in arrays)


def _train(loss_fn, params, arrays, *, steps, seed, out, name, progress, desc):
    """Adam 3e-3 with clipping over random batches of 64 rows of ``arrays``: the trained params."""
    opt = optimizer(3e-3)
    arrays = tuple(map(jnp.asarray, arrays))
    return recurrax.train.fit(recurrax.train.make_train_step(loss_fn, opt), params, opt.init(params),
                        lambda k: _batches(arrays, 64, k), steps=steps, seed=seed,
                        checkpoint=_checkpoint(out, name), progress=progress, desc=desc).params


def _encode(vocab, sentences, add_sos=True):
    ids = [vocab.encode(s, add_sos=add_sos, add_eos=add_sos) for s in sentences]
    return data.pad_batch(ids, vocab.pad_id)


def run_classify(*, steps: int = 400, hidden: int = 64, seed: int = 0, out: str | None = None,
                 progress: bool | None = None) -> dict:
    """n to 1: sentence polarity with negation, the lecture's 1-hot inputs and a GRU."""
    train_s, train_y = tasks.polarity_task(seed, 2000)
    test_s, test_y = tasks.polarity_task(seed + 1, 500)
    vocab = data.Vocab.build(train_s)
    (xtr, ltr), (xte, lte) = _encode(vocab, train_s), _encode(vocab, test_s)
    model = recurrax.models.sequence_classifier(recurrax.GRU(hidden), 2, vocab_size=len(vocab))
    params = model.init(jax.random.key(seed))
    logits = jax.vmap(model.apply, in_axes=(None, 0, 0))

    def loss_fn(p, b):
        x, n, y = b
        return jnp.mean(recurrax.models.cross_entropy(logits(p, x, n), y))

    params = _train(loss_fn, params, (xtr, ltr, train_y), steps=steps, seed=seed, out=out, name="polarity_gru",
                    progress=progress, desc="polarity")
    pred = np.asarray(jnp.argmax(jax.jit(logits)(params, jnp.asarray(xte), jnp.asarray(lte)), -1))
    cm = np.asarray(recurrax.models.confusion_matrix(pred, test_y, 2))
    negated = np.array(["not" in s for s in test_s])
    return {"accuracy": float(recurrax.models.accuracy(pred, test_y)), "cm": cm,
            "negated_accuracy": float(recurrax.models.accuracy(pred[negated], test_y[negated])),
            "examples": [(" ".join(s), int(p), int(t)) for s, p, t in zip(test_s[:6], pred, test_y)],
            "pred": pred, "true": test_y}


def run_tag(*, steps: int = 300, hidden: int = 32, seed: int = 0, out: str | None = None,
            progress: bool | None = None) -> dict:
    """n to n: POS tags where "bank" (and "book", "watch", ...) need context; a BiLSTM tagger."""
    train_s, train_t = tasks.bank_tagging_task(seed, 2000)
    test_s, test_t = tasks.bank_tagging_task(seed + 1, 500)
    words, tagset = data.Vocab.build(train_s), data.Vocab.build(train_t, lower=False, reserved=False)
    (xtr, ltr), (xte, lte) = _encode(words, train_s, False), _encode(words, test_s, False)
    ytr = data.pad_batch([tagset.encode(t) for t in train_t])[0]
    yte = data.pad_batch([tagset.encode(t) for t in test_t])[0]
    model = recurrax.models.sequence_tagger(recurrax.Bidirectional(recurrax.LSTM(hidden)), len(tagset),
                                     vocab_size=len(words), embed_dim=32)
    params = model.init(jax.random.key(seed))
    logits = jax.vmap(model.apply, in_axes=(None, 0, 0))

    def loss_fn(p, b):
        x, n, y = b
        return recurrax.models.sequence_cross_entropy(logits(p, x, n), y, n)

    params = _train(loss_fn, params, (xtr, ltr, ytr), steps=steps, seed=seed, out=out, name="tagger_bilstm",
                    progress=progress, desc="tagging")
    pred = np.asarray(jnp.argmax(jax.jit(logits)(params, jnp.asarray(xte), jnp.asarray(lte)), -1))
    mask = np.asarray(data.length_mask(lte, xte.shape[1]))
    ambiguous = mask & np.isin(xte, [words.id(w) for w in tasks._synthetic._AMBIGUOUS])
    return {"accuracy": float(recurrax.models.accuracy(pred, yte, mask)),
            "ambiguous_accuracy": float(recurrax.models.accuracy(pred, yte, ambiguous)),
            "cm": np.asarray(recurrax.models.confusion_matrix(pred, yte, len(tagset), mask)), "tags": tagset.tokens}


def run_generate(*, steps: int = 1000, hidden: int = 128, seed: int = 0, out: str | None = None,
                 progress: bool | None = None) -> dict:
    """n to m: number words to digits with a GRU encoder-decoder; greedy decoding."""
    src_w, tgt_w, _ = tasks.number_words_task(seed, 4000)
    test_src, test_tgt, test_val = tasks.number_words_task(seed + 1, 500)
    sv, tv = data.Vocab.build(src_w), data.Vocab.build(tgt_w)
    model = recurrax.models.encoder_decoder(recurrax.GRU(hidden), recurrax.GRU(hidden), len(sv), len(tv), embed_dim=32,
                                     sos_id=tv.sos_id, eos_id=tv.eos_id, pad_id=tv.pad_id)
    src, src_len = _encode(sv, src_w, False)
    tgt, tgt_len = _encode(tv, tgt_w)  # <sos> digits <eos>
    arrays = (src, src_len, tgt, tgt_len)
    params = model.init(jax.random.key(seed))

    def loss_fn(p, b):
        s, sn, t, tn = b
        # teacher forcing: read <sos> y_1 .. y_m, predict y_1 .. y_m <eos>
        out = jax.vmap(lambda s, sn, t, tn: model.apply(p, s, t[:-1], src_length=sn, tgt_length=tn - 1))(s, sn, t, tn)
        return recurrax.models.sequence_cross_entropy(out, t[:, 1:], tn - 1)

    params = _train(loss_fn, params, arrays, steps=steps, seed=seed, out=out, name="numbers_seq2seq",
                    progress=progress, desc="generation")
    ts, tsl = _encode(sv, test_src, False)
    gen = jax.jit(jax.vmap(lambda s, n: model.generate(params, s, src_length=n, max_len=6)))
    tokens, lengths = map(np.asarray, gen(jnp.asarray(ts), jnp.asarray(tsl)))
    decoded = ["".join(tv.decode(t)) for t in tokens]
    exact = np.array([d == str(v) for d, v in zip(decoded, test_val)])
    return {"exact_match": float(exact.mean()),
            "examples": [(" ".join(w), d, str(v)) for w, d, v in zip(test_src[:6], decoded, test_val)]}


def gradient_flow_cases(hidden, input_size, key):
    """The cells of the gradient-flow comparison, at initialisation: ``{label: (cell, params)}``."""

    def init(cell):
        return cell, cell.init(key, input_size)

    def rnn_with_radius(rho):
        cell, p = init(recurrax.RNN(hidden))
        Q = jax.nn.initializers.orthogonal()(jax.random.fold_in(key, 1), (hidden, hidden))
        return cell, p._replace(W=rho * Q)

    gru, gru_p = init(recurrax.GRU(hidden))
    H = hidden
    return {
        "rnn, W = 0.9 x orthogonal": rnn_with_radius(0.9),
        "rnn, W = 1.5 x orthogonal": rnn_with_radius(1.5),
        "rnn, default init": init(recurrax.RNN(hidden)),
        "lstm, default init": init(recurrax.LSTM(hidden)),
        "lstm, forget_bias=3": init(recurrax.LSTM(hidden, forget_bias=3.0)),
        "gru, default init": (gru, gru_p),
        "gru, update-gate bias -3": (gru, gru_p._replace(b=gru_p.b.at[H : 2 * H].set(-3.0))),
    }


def run_gradflow(*, seq_len: int = 100, hidden: int = 32, seed: int = 0, plot: str | None = None) -> dict:
    """Vanishing and exploding gradients: ``||dL/ds_t||`` against the lag for the three cells at
    initialisation, printed as a table and (with matplotlib) plotted to ``plot``."""
    lags = [lag for lag in (0, 1, 5, 10, 25, 50, 100, 200, 500) if lag < seq_len]
    with jax.enable_x64(True):
        key = jax.random.key(seed)
        xs = 0.5 * jax.random.normal(key, (seq_len, 4), jnp.float64)
        curves = {}
        for label, (cell, params) in gradient_flow_cases(hidden, 4, key).items():
            params = jax.tree.map(lambda a: a.astype(np.float64), params)
            curves[label] = np.asarray(recurrax.gradient_norms(cell, params, xs))
    print(f"||dL/ds_t|| at lag T-1-t, L = sum(h_T), T={seq_len}, H={hidden}, "
          f"inputs N(0, 0.25), float64, untrained cells")
    width = max(map(len, curves))
    print(" " * width + "".join(f"{f'lag {l}':>11}" for l in lags))
    for label, norms in curves.items():
        print(label.ljust(width) + "".join(f"{norms[-1 - l]:11.2e}" for l in lags))
    if plot:
        try:
            print("plot saved to", recurrax.plots.plot_gradient_flow(curves, plot, title=f"Gradient flow, T={seq_len}"))
        except ImportError as e:
            print(f"no plot: {e}")
    return curves


def demo(*, seq_len: int = 50, steps: int = 2000, hidden: int = 128, seed: int = 0, cells=("rnn", "lstm", "gru"),
         out: str = "runs/demo", progress: bool | None = None) -> dict:
    """Everything: the adding problem for the three cells, then the three problem types."""
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    print(f"== 1. The adding problem, T={seq_len}: remember two marked values over up to {seq_len} steps")
    print(f"   (predicting the mean scores MSE {ADDING_BASELINE:.3f}; H={hidden}, batch 64, Adam 2e-3, "
          f"clip 1, {steps} steps)")
    adding = []
    for name in cells:
        adding.append(run_adding(name, seq_len=seq_len, steps=steps, hidden=hidden, seed=seed, out=out,
                                 progress=progress))
        print(f"   {name:5s} test MSE {adding[-1]['test_mse']:.4f}  ({adding[-1]['seconds']:.0f} s)")
    print(adding_table(adding))
    _plot_curves(adding, os.path.join(out, "adding_curves.png"))

    print("\n== 2. Sequence classification (n to 1): polarity with negation, 1-hot words, GRU")
    cls = run_classify(seed=seed, out=out, progress=progress)
    print(recurrax.models.predictions_table(cls["pred"], cls["true"], ["negative", "positive"], limit=6))
    for sentence, p, t in cls["examples"][:3]:
        print(f"   {sentence!r}: predicted {p}, truth {t}")
    print(recurrax.models.confusion_table(cls["cm"], ["negative", "positive"]))
    print(f"accuracy on sentences with 'not': {cls['negated_accuracy']:.3f}")
    _plot_cm(cls["cm"], ["negative", "positive"], "Polarity", os.path.join(out, "classify_confusion.png"))

    print("\n== 3. Sequence labelling (n to n): POS tags where 'bank' needs context, BiLSTM")
    tag = run_tag(seed=seed, out=out, progress=progress)
    print(recurrax.models.confusion_table(tag["cm"], tag["tags"]))
    print(f"accuracy on the ambiguous words (bank, book, watch, park, fish): {tag['ambiguous_accuracy']:.3f}")
    _plot_cm(tag["cm"], tag["tags"], "POS tags, bank task", os.path.join(out, "tagging_confusion.png"))

    print("\n== 4. Sequence generation (n to m): number words to digits, GRU encoder-decoder, greedy")
    gen = run_generate(seed=seed, out=out, progress=progress)
    for words, got, want in gen["examples"]:
        print(f"   {words!r:32s} -> {got!r:6s} (truth {want})")
    print(f"exact match on 500 test numbers: {gen['exact_match']:.3f}")

    print("\n== 5. Vanishing and exploding gradients (BPTT): how far back the gradient reaches")
    flow = run_gradflow(seq_len=100, hidden=32, seed=seed, plot=os.path.join(out, "gradient_flow.png"))

    print(f"\ncheckpoints (directories, restore with recurrax.train.load_checkpoint) and plots are in {out}/")
    print(f"total time {time.perf_counter() - t0:.0f} s")
    return {"adding": adding, "classify": cls, "tag": tag, "generate": gen, "gradient_flow": flow}


def _plot_curves(results, path):
    try:
        fig, ax = figure((6, 3.5), "the demo's learning curves")
    except ImportError:
        print("   (no plot: pip install 'recurrax[plot]')")
        return
    for r in results:
        steps, mse = zip(*r["curve"])
        ax.plot(steps, mse, marker="o", label=r["cell"])
    ax.axhline(ADDING_BASELINE, color="gray", ls="--", label="constant predictor")
    ax.set_yscale("log")
    ax.set(xlabel="training step", ylabel="test MSE", title=f"Adding problem, T={results[0]['seq_len']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"   learning curves: {path}")


def _plot_cm(cm, names, title, path):
    try:
        recurrax.plots.plot_confusion_matrix(cm, names, path, title=title)
    except ImportError:
        print("   (no plot: pip install 'recurrax[plot]')")
        return
    print(f"   confusion matrix: {path}")
