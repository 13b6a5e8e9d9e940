"""Sentence polarity on the UCI Sentiment Labelled Sentences (Amazon, IMDB, Yelp), from scratch.

    python examples/sentiment.py [--epochs 10] [--data ../shared/data/sentiment/uci_sentiment_labelled_sentences]

The 3,000 sentences have no official split: a seeded shuffle gives 2,400 train, 300 dev
and 300 test. Words are lower-cased and tokenised, framed by <sos> ... <eos> as in the
lecture, embedded (learnt from scratch) and read by a bidirectional GRU; the states are
max-pooled and a readout gives the two classes. Prints dev accuracy per epoch, then the
test accuracy with the lecture's tables.
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
from recurrax.data import Vocab, load_tsv, pad_batch, tokenize

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = ["amazon_cells_labelled.txt", "imdb_labelled.txt", "yelp_labelled.txt"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "sentiment",
                                                       "uci_sentiment_labelled_sentences"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not os.path.isdir(args.data):
        raise SystemExit(f"no data at {args.data} (the sentiment folder of ../shared/data)")
    t_start = time.perf_counter()
    rows = [r for name in FILES for r in load_tsv(os.path.join(args.data, name))]
    order = np.random.default_rng(args.seed).permutation(len(rows))
    split = {"train": order[:2400], "dev": order[2400:2700], "test": order[2700:]}
    tokens = [tokenize(s) for s, _ in rows]
    labels = np.array([y for _, y in rows], np.int32)
    vocab = Vocab.build([tokens[i] for i in split["train"]])
    ids, lengths = pad_batch([vocab.encode(t, add_sos=True, add_eos=True) for t in tokens], vocab.pad_id)
    data = {k: (jnp.asarray(ids[v]), jnp.asarray(lengths[v]), jnp.asarray(labels[v])) for k, v in split.items()}
    print(f"{len(rows)} sentences, vocabulary {len(vocab)}, padded length {ids.shape[1]}")

    model = recurrax.models.sequence_classifier(recurrax.Bidirectional(recurrax.GRU(args.hidden)), 2,
                                         vocab_size=len(vocab), embed_dim=64, pooling="max")
    params = model.init(jax.random.key(args.seed))
    logits = jax.vmap(model.apply, in_axes=(None, 0, 0))

    def loss_fn(p, b):
        x, n, y = b
        return jnp.mean(recurrax.models.cross_entropy(logits(p, x, n), y))

    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(2e-3, weight_decay=1e-2))
    step = recurrax.train.make_train_step(loss_fn, opt)
    predict = jax.jit(lambda p, x, n: jnp.argmax(logits(p, x, n), -1))
    opt_state = opt.init(params)
    rng = np.random.default_rng(args.seed)
    x, n, y = data["train"]
    best = (-1.0, params)
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        perm = rng.permutation(len(y))
        for i in range(0, len(y) - 31, 32):
            idx = perm[i : i + 32]
            params, opt_state, loss = step(params, opt_state, (x[idx], n[idx], y[idx]))
        dev_acc = float(recurrax.models.accuracy(predict(params, *data["dev"][:2]), data["dev"][2]))
        if dev_acc > best[0]:
            best = (dev_acc, params)
        print(f"epoch {epoch}: dev accuracy {dev_acc:.3f} ({time.perf_counter() - t0:.1f} s)")
    dev_acc, params = best
    pred = predict(params, *data["test"][:2])
    cm = recurrax.models.confusion_matrix(pred, data["test"][2], 2)
    print(f"best dev accuracy {dev_acc:.3f}; on test, with those parameters:")
    print(recurrax.models.predictions_table(pred, data["test"][2], ["negative", "positive"], limit=6))
    print(recurrax.models.confusion_table(cm, ["negative", "positive"]))
    print(f"total time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
