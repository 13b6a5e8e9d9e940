"""The command line: ``python -m recurrax <command>``."""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile


class _UsageError(Exception):
    """Bad command-line input found after parsing; main reports it as argparse does (exit 2)."""


def _int_in(low: int, high: int | None = None):
    """An argparse ``type``: an integer in ``[low, high]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer; got {text!r}") from None
        if value < low or (high is not None and value > high):
            within = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be an integer {within}; got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    """An argparse ``type``: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0; got {text}")
    return value


# jax.random.key keeps the low 32 bits of a seed, so larger seeds would repeat smaller ones.
_seed = _int_in(0, 2**32 - 1)


def _writable_dir(option: str, path: str) -> None:
    """Create ``path`` and write a scratch file in it, so a bad ``--out`` fails before training."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise _UsageError(f"argument {option}: cannot write to the directory {path!r} ({e.strerror}); "
                          f"pass a directory you can write to.") from None


def _demo(args) -> int:
    from recurrax._apps import _demo

    cells = ("rnn", "lstm", "gru") if args.cell == "all" else (args.cell,)
    _demo.demo(seq_len=args.seq_len, steps=args.steps, hidden=args.hidden, seed=args.seed, cells=cells,
               out=args.out, progress=False if args.quiet else None)
    return 0


def _adding(args) -> int:
    from recurrax._apps import _demo

    cells = ("rnn", "lstm", "gru") if args.cell == "all" else (args.cell,)
    results = [_demo.run_adding(c, seq_len=args.seq_len, steps=args.steps, hidden=args.hidden, seed=args.seed,
                                lr=args.lr, out=args.out, progress=False if args.quiet else None) for c in cells]
    print(_demo.adding_table(results))
    return 0


def _classify(args) -> int:
    import recurrax
    import recurrax.models
    from recurrax._apps import _demo

    r = _demo.run_classify(
        steps=args.steps, hidden=args.hidden, seed=args.seed, out=args.out, progress=False if args.quiet else None
    )
    print(recurrax.models.predictions_table(r["pred"], r["true"], ["negative", "positive"]))
    print(recurrax.models.confusion_table(r["cm"], ["negative", "positive"]))
    print(f"accuracy on sentences with 'not': {r['negated_accuracy']:.3f}")
    return 0


def _tag(args) -> int:
    import recurrax
    from recurrax._apps import _demo

    r = _demo.run_tag(
        steps=args.steps, hidden=args.hidden, seed=args.seed, out=args.out, progress=False if args.quiet else None
    )
    print(recurrax.models.confusion_table(r["cm"], r["tags"]))
    print(f"accuracy on the ambiguous words: {r['ambiguous_accuracy']:.3f}")
    return 0


def _generate(args) -> int:
    from recurrax._apps import _demo

    r = _demo.run_generate(
        steps=args.steps, hidden=args.hidden, seed=args.seed, out=args.out, progress=False if args.quiet else None
    )
    for words, got, want in r["examples"]:
        print(f"{words!r:32s} -> {got!r:6s} (truth {want})")
    print(f"exact match: {r['exact_match']:.3f}")
    return 0


def _gradcheck(args) -> int:
    """gradcheck every built-in cell, then show that it catches a planted wrong gradient."""
    import jax

    import recurrax
    from recurrax._core._gradcheck import planted_bug_cell

    cells = {
        "rnn (tanh)": recurrax.RNN(args.hidden),
        "rnn (relu)": recurrax.RNN(args.hidden, activation=jax.nn.relu),
        "lstm": recurrax.LSTM(args.hidden),
        "gru (lecture, reset before W_n)": recurrax.GRU(args.hidden),
        "gru (reset_after, PyTorch form)": recurrax.GRU(args.hidden, reset_after=True),
        "Stack(LSTM, GRU)": recurrax.Stack(recurrax.LSTM(args.hidden), recurrax.GRU(args.hidden)),
    }
    key = jax.random.key(args.seed)
    xs = jax.random.normal(key, (args.seq_len, 3))

    def check(cell, **kwargs):
        try:
            return recurrax.gradcheck(cell, cell.init(key, 3), xs, mode=args.mode, seed=args.seed, **kwargs)
        except ValueError as e:  # --mode entries past gradcheck's max_entries
            raise _UsageError(f"argument --mode: {e}") from None

    ok = True
    for name, cell in cells.items():
        report = check(cell, length=args.seq_len - 1)
        print(f"== {name}\n{report}\n")
        ok &= report.passed
    bad = planted_bug_cell(args.hidden)
    report = check(bad)
    print(f"== planted bug: an rnn whose tanh has a custom_vjp 0.1% off (must FAIL)\n{report}\n")
    ok &= not report.passed
    print("gradcheck: every built-in cell passed and the planted bug was caught" if ok else "gradcheck: PROBLEMS above")
    return 0 if ok else 1


def _gradflow(args) -> int:
    """||dL/ds_t|| against the lag for the three cells: vanishing, exploding, kept alive."""
    from recurrax._apps import _demo

    _demo.run_gradflow(seq_len=args.seq_len, hidden=args.hidden, seed=args.seed, plot=args.plot)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recurrax", description="recurrax command line.")
    sub = parser.add_subparsers(dest="command", required=True)
    positive = _int_in(1)

    def common(p, steps, hidden, out_help, which="per model"):
        p.add_argument("--steps", type=positive, default=steps, help=f"training steps ({which})")
        p.add_argument("--hidden", type=positive, default=hidden, help=f"hidden size H ({which})")
        p.add_argument("--seed", type=_seed, default=0)
        p.add_argument("--out", default="runs/demo", help=out_help)
        p.add_argument(
            "--quiet", action="store_true", help="no progress bars (they are shown only on a terminal anyway)"
        )
        return p

    checkpoints = "where checkpoints go ('' for none)"
    demo = common(sub.add_parser(
        "demo", help="the main job: the lecture end to end (about 5 minutes on 2 CPU cores)",
        description="The adding problem for each --cell (--seq-len, --steps, --hidden apply to it), then "
                    "classification (GRU), tagging (BiLSTM), generation (GRU encoder-decoder) and the "
                    "gradient-flow figure, each with its own fixed sizes. Needs the demo extra: "
                    "pip install \"recurrax[demo]\"."),
        2000, 128, "where checkpoints and plots go", which="of the adding problem; the other parts use their own")
    # The adding problem marks two of its T steps.
    demo.add_argument("--seq-len", type=_int_in(2), default=50, help="T of the adding problem")
    demo.add_argument("--cell", choices=["all", "rnn", "lstm", "gru"], default="all")
    demo.set_defaults(run=_demo)
    adding = common(sub.add_parser("adding", help="the adding problem for one or all cells"), 2000, 128, checkpoints)
    adding.add_argument("--seq-len", type=_int_in(2), default=50)
    adding.add_argument("--cell", choices=["all", "rnn", "lstm", "gru"], default="all")
    adding.add_argument("--lr", type=_positive_float, default=2e-3)
    adding.set_defaults(run=_adding)
    common(sub.add_parser("classify", help="n to 1: sentence polarity with negation"), 400, 64,
           checkpoints).set_defaults(run=_classify)
    common(sub.add_parser("tag", help="n to n: POS tags that need context ('bank')"), 300, 32,
           checkpoints).set_defaults(run=_tag)
    common(sub.add_parser("generate", help="n to m: number words to digits"), 1000, 128,
           checkpoints).set_defaults(run=_generate)

    check = sub.add_parser("gradcheck", help="check autodiff, manual BPTT and finite differences for every cell")
    check.add_argument("--mode", choices=["directions", "entries"], default="entries")
    check.add_argument("--hidden", type=positive, default=3)
    # length = T - 1 must leave a step to check.
    check.add_argument("--seq-len", type=_int_in(2), default=5)
    check.add_argument("--seed", type=_seed, default=0)
    check.set_defaults(run=_gradcheck)

    flow = sub.add_parser("gradflow", help="vanishing and exploding gradients: ||dL/ds_t|| against the lag")
    flow.add_argument("--seq-len", type=positive, default=101)
    flow.add_argument("--hidden", type=positive, default=32)
    flow.add_argument("--seed", type=_seed, default=0)
    flow.add_argument("--plot", default="runs/gradient_flow.png", help="image to write ('' for none)")
    flow.set_defaults(run=_gradflow)
    args = parser.parse_args(argv)
    try:
        if args.command == "demo" and not args.out:
            raise _UsageError("argument --out: demo writes its plots there; pass a directory.")
        if getattr(args, "out", ""):
            _writable_dir("--out", args.out)
        if getattr(args, "plot", ""):
            if os.path.isdir(args.plot):
                raise _UsageError(f"argument --plot: {args.plot!r} is a directory; pass an image path such as "
                                  f"{os.path.join(args.plot, 'gradient_flow.png')!r}.")
            _writable_dir("--plot", os.path.dirname(args.plot) or ".")
        return args.run(args)
    except _UsageError as e:
        sub.choices[args.command].error(str(e))
    except ModuleNotFoundError as e:
        # The applications' dependencies are extras (pyproject.toml); name the one to install.
        extra = {"optax": "train", "orbax": "train", "tqdm": "train", "matplotlib": "plot"}.get(
            (e.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"python -m recurrax {args.command}: needs {e.name}, which `import recurrax` does not install; "
              f'pip install "recurrax[demo]" (or "recurrax[{extra}]")', file=sys.stderr)
        return 1
