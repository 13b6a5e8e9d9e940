"""A word-level BiLSTM POS tagger trained from scratch on UD English-EWT (CPU, minutes).

    python examples/ud_pos_tagger.py [--epochs 6] [--dropout 0.25] [--data ../shared/data/ud_english_ewt]

Inputs per word, all looked up in tables learnt from scratch (no pre-trained vectors, no
character RNN): the lower-cased word (rare words become <unk>, and 5% of training words
are dropped to <unk> so the model learns what to do with unknown ones), its 3-letter
suffix, and its shape (capitalised, all caps, digits, punctuation). A 1-layer
bidirectional LSTM reads them and a readout tags every word with one of the 17 UPOS tags.
``--dropout P`` trains it with variational dropout (``recurrax.Dropout``: one mask per
sentence on the LSTM's input and on its recurrent input, rate P each, a new key every
step); evaluation runs without a key, so without noise. Prints dev accuracy per epoch, the
per-tag accuracy and the confusion matrix.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import recurrax
import recurrax.models
import recurrax.train
from recurrax.data import Vocab, load_conllu

HERE = os.path.dirname(os.path.abspath(__file__))


def shape(word: str) -> str:
    if any(c.isdigit() for c in word):
        return "digit"
    if not any(c.isalpha() for c in word):
        return "punct"
    if word.isupper():
        return "upper"
    return "title" if word[0].isupper() else "lower"


def features(sentences, vocabs):
    """Three id sequences per sentence: word, suffix, shape."""
    words, suffixes, shapes = vocabs
    return [(words.encode(ws), suffixes.encode([w.lower()[-3:] for w in ws]), shapes.encode([shape(w) for w in ws]))
            for ws in sentences]


def batches(examples, tags, batch_size, rng, word_dropout=0.0, unk=0):
    """Length-bucketed batches padded to a multiple of 8 steps (few shapes, little padding)."""
    order = np.argsort([len(t) for t in tags], kind="stable")
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if rng is not None:
        rng.shuffle(chunks)
    for idx in chunks:
        T = int(np.ceil(max(len(tags[i]) for i in idx) / 8) * 8)
        pad = lambda seqs: recurrax.data.pad_batch(seqs, 0, max_len=T)[0]
        w, s, h = (pad([examples[i][k] for i in idx]) for k in range(3))
        if word_dropout and rng is not None:
            w = np.where(rng.random(w.shape) < word_dropout, unk, w)
        y, lengths = recurrax.data.pad_batch([tags[i] for i in idx], 0, max_len=T)
        if len(idx) < batch_size:  # keep one batch shape per length bucket
            fill = batch_size - len(idx)
            w, s, h, y = (np.concatenate([a, np.zeros((fill, T), a.dtype)]) for a in (w, s, h, y))
            lengths = np.concatenate([lengths, np.zeros(fill, np.int32)])
        yield tuple(map(jnp.asarray, (w, s, h, y, lengths)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "ud_english_ewt"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dropout", type=float, default=0.0, help="variational dropout rate (input and recurrent)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not os.path.isdir(args.data):
        raise SystemExit(f"no data at {args.data} (the UD English-EWT folder of ../shared/data)")
    t_start = time.perf_counter()
    train = load_conllu(os.path.join(args.data, "en_ewt-ud-train.conllu"))
    dev = load_conllu(os.path.join(args.data, "en_ewt-ud-dev.conllu"))
    words = Vocab.build([w for w, _ in train], min_freq=2)
    suffixes = Vocab.build([[w.lower()[-3:] for w in ws] for ws, _ in train], min_freq=2)
    shapes = Vocab(["digit", "punct", "upper", "title", "lower"])
    tagset = Vocab.build([t for _, t in train], lower=False, reserved=False)
    vocabs = (words, suffixes, shapes)
    xtr, xdev = features([w for w, _ in train], vocabs), features([w for w, _ in dev], vocabs)
    ytr, ydev = [tagset.encode(t) for _, t in train], [tagset.encode(t) for _, t in dev]
    print(f"train {len(train)} sentences / {sum(map(len, ytr))} words, dev {len(dev)} / {sum(map(len, ydev))}; "
          f"vocab {len(words)} words, {len(suffixes)} suffixes, {len(tagset)} tags")

    emb = [recurrax.Embedding(100), recurrax.Embedding(32), recurrax.Embedding(8)]
    cell = recurrax.LSTM(args.hidden)
    if args.dropout:
        cell = recurrax.Dropout(cell, rate=args.dropout, recurrent_rate=args.dropout)
    encoder = recurrax.Bidirectional(cell)
    readout = recurrax.Dense(len(tagset))
    keys = jax.random.split(jax.random.key(args.seed), 5)
    params = {"emb": [e.init(k, len(v)) for e, k, v in zip(emb, keys, vocabs)], "enc": encoder.init(keys[3], 140),
              "out": readout.init(keys[4], 2 * args.hidden)}

    def logits_one(p, w, s, h, n, key=None):
        x = jnp.concatenate([e.apply(pe, ids) for e, pe, ids in zip(emb, p["emb"], (w, s, h))], axis=-1)
        _, ys = encoder.apply(p["enc"], x, length=n, key=key)
        return readout.apply(p["out"], ys)

    logits = jax.vmap(logits_one, in_axes=(None, 0, 0, 0, 0, 0))

    def loss_fn(p, b):
        w, s, h, y, n, key = b
        # one key per sentence, as scan's batch form would derive them (docs/packed.md)
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(w.shape[0]))
        # the lecture's loss summed over words; divided by the mean length to keep steps comparable
        return recurrax.models.sequence_cross_entropy(logits(p, w, s, h, n, keys), y, n) / jnp.maximum(
            jnp.mean(n), 1.0)

    opt = optax.chain(optax.clip_by_global_norm(5.0), optax.adam(2e-3))
    step = recurrax.train.make_train_step(loss_fn, opt)
    # evaluation: no key, so no noise
    predict = jax.jit(lambda p, w, s, h, n: jnp.argmax(jax.vmap(logits_one, in_axes=(None, 0, 0, 0, 0))(
        p, w, s, h, n), -1))
    opt_state = opt.init(params)
    rng = np.random.default_rng(args.seed)
    noise_key, n_steps = jax.random.key(args.seed + 1), 0

    def evaluate(p):
        cm = np.zeros((len(tagset), len(tagset)), np.int64)
        for w, s, h, y, n in batches(xdev, ydev, 256, None):
            mask = recurrax.data.length_mask(n, y.shape[1])
            cm += np.asarray(recurrax.models.confusion_matrix(predict(p, w, s, h, n), y, len(tagset), mask))
        return cm

    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        losses = []
        for b in batches(xtr, ytr, args.batch, rng, word_dropout=0.05, unk=words.unk_id):
            key = jax.random.fold_in(noise_key, n_steps)  # a new key every step
            params, opt_state, loss = step(params, opt_state, (*b, key))
            n_steps += 1
            losses.append(loss)
        cm = evaluate(params)
        print(f"epoch {epoch}: train loss {float(np.mean(losses)):.4f}, dev UPOS accuracy "
              f"{np.trace(cm) / cm.sum():.4f} ({time.perf_counter() - t0:.0f} s)")
    print(recurrax.models.confusion_table(cm, tagset.tokens))
    known = sum(1 for ws, _ in dev for w in ws if w.lower() in words)
    print(f"dev words in the training vocabulary: {known}/{sum(map(len, ydev))}")
    print(f"final dev UPOS accuracy {np.trace(cm) / cm.sum():.4f}; total time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
