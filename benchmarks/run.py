"""Time recurrax against every anchor, side by side in one run, and report ratios.

    python -m benchmarks [--suite NAME] [--device cpu|gpu] [--reps 10] [--quick]
                         [--baseline REV] [--impl NAME ...] [--cell NAME ...]

Suites: "main" (B=32 T=128 I=64 H=256, every cell), "sweeps" (the LSTM over T, B, H),
"gpu" (B=64 T=512 I=512 H=512), "small" (B=1 and B=8 at the main T, I, H: the small-batch
check), "placement" (every cell at B=1..32: where the input projection belongs), "backward"
(LSTM and GRU-ra over B and T: backward="manual" against autodiff), "all" (gpu+main+sweeps).

``--baseline REV`` also times recurrax as it was at the git revision ``REV`` (a commit
hash, tag or branch of this repository: ``--baseline 49b2884``, ``--baseline HEAD~3``),
as the implementation ``recurrax@REV``, interleaved with everything else: before/after
ratios from one run. The benchmark extracts that revision's ``recurrax/`` with ``git archive
REV recurrax | tar -x`` into a temporary directory (removed on exit), imports it beside the
current package (``load_baseline``) and runs the batch form of its ``scan``, exactly as the
``recurrax`` row runs the current one, so before and after compare like with like. Its
cells are built by class (``recurrax.LSTM`` ...), so any revision that has the classes
works, whatever else its API had (49b2884 had lowercase factories too). ``REV`` may also be
a directory that holds a ``recurrax/`` package (``recurrax@baseline``); a revision needs
nothing but this clone.

For every configuration and cell it times a warm, compiled forward and forward+backward
(median of ``--reps`` rounds, all implementations interleaved within each round,
``block_until_ready`` / ``cuda.synchronize``), the compile
time of the forward+backward program separately (JAX: ``lower().compile()``), and the
temporary memory XLA allocates for it (``memory_analysis``; torch on GPU:
``max_memory_allocated``). Results, with the command that made them, go to
``benchmarks/results/<YYYY-MM-DD>/<device>-<suite>[-<label>].json`` (the day of the run; the
label is ``baseline-<REV>`` with ``--baseline``, then the cells of ``--cell``; ``--out DIR``
puts them in ``DIR`` instead) and a Markdown table of ratios (anchor time / recurrax time:
above 1 means recurrax is faster) to stdout and ``.md``. An anchor that is not installed or does not offer a cell is
listed as missing, never fatal.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.anchors import ANCHOR_NOTES, IMPLEMENTATIONS, Config, Missing, build_recurrax

MAIN = Config(B=32, T=128, I=64, H=256)
CELLS = ("rnn", "lstm", "gru", "gru_ra")


def suites(device: str, quick: bool) -> dict:
    """Name -> list of (cell, Config). The sweeps run the LSTM only, to bound the time."""
    T_sweep = [16, 128, 1024] if quick else [16, 64, 256, 1024, 4096]
    B_sweep = [1, 32, 256] if quick else [1, 8, 32, 64, 256]
    H_sweep = [32, 256, 1024] if quick else [32, 128, 256, 512, 1024]
    main = [(c, MAIN) for c in CELLS] + [(c, dataclasses.replace(MAIN, dtype="bfloat16")) for c in ("lstm", "gru_ra")]
    sweeps = ([("lstm", dataclasses.replace(MAIN, T=t)) for t in T_sweep]
              + [("lstm", dataclasses.replace(MAIN, B=b)) for b in B_sweep]
              + [("lstm", dataclasses.replace(MAIN, H=h)) for h in H_sweep])
    gpu = [(c, Config(B=64, T=512, I=512, H=512)) for c in ("lstm", "gru_ra")]
    small = [(c, dataclasses.replace(MAIN, B=b)) for b in (1, 8) for c in CELLS]
    placement = [(c, dataclasses.replace(MAIN, B=b)) for c in CELLS for b in (1, 4, 8, 16, 32)]
    backward = [(c, dataclasses.replace(MAIN, B=b, T=t)) for c in ("lstm", "gru_ra")
                for b, t in ((8, 128), (32, 128), (128, 128), (32, 512))]
    # "all" starts with the GPU target, so that a run cut short by gpu.sh's timeout keeps it.
    return {"main": main, "sweeps": sweeps, "gpu": gpu, "small": small, "placement": placement,
            "backward": backward, "all": gpu + main + sweeps}


def load_baseline(path: str):
    """The ``recurrax`` package found under ``path``, imported beside the current one.

    Its modules are imported under their own names with the current ``recurrax`` modules
    set aside, then both sets are put back under distinct keys; the functions keep
    references to their own modules' globals, so the two copies run side by side.
    """
    mine = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "recurrax" or k.startswith("recurrax.")}
    sys.path.insert(0, os.path.abspath(path))
    try:
        import recurrax as baseline
    finally:
        sys.path.remove(os.path.abspath(path))
        for k in [k for k in sys.modules if k == "recurrax" or k.startswith("recurrax.")]:
            sys.modules["baseline_" + k] = sys.modules.pop(k)
        sys.modules.update(mine)
    return baseline


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def materialise(rev: str, into: str) -> str:
    """Extract the git revision ``rev``'s ``recurrax/`` into the directory ``into``
    (``git archive rev recurrax | tar -x -C into``, in this repository); return its commit hash."""
    found = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=REPO,
                           capture_output=True, text=True)
    if found.returncode:
        raise SystemExit(f"--baseline {rev}: neither a directory nor a git revision of {REPO}")
    archive = subprocess.Popen(["git", "archive", found.stdout.strip(), "recurrax"], cwd=REPO, stdout=subprocess.PIPE)
    tar = subprocess.run(["tar", "-x", "-C", into], stdin=archive.stdout)
    archive.stdout.close()
    if archive.wait() or tar.returncode:
        raise SystemExit(f"--baseline {rev}: git archive {rev} recurrax | tar -x failed")
    return found.stdout.strip()


def baseline(spec: str, stack: contextlib.ExitStack) -> tuple:
    """``(name, module, note, tag)`` for ``--baseline spec``: a directory holding a ``recurrax/``,
    or a git revision, extracted into a temporary directory that ``stack`` removes on exit."""
    if os.path.isdir(spec):
        return ("recurrax@baseline", load_baseline(spec), f"recurrax from the directory {spec}, batch form of its scan",
                os.path.basename(os.path.abspath(spec)))
    into = stack.enter_context(tempfile.TemporaryDirectory(prefix="recurrax-baseline-"))
    commit = materialise(spec, into)
    return (f"recurrax@{spec}", load_baseline(into),
            f"recurrax at git revision {spec} ({commit}), batch form of its scan", spec)


def _compiled(bench):
    """JAX: compile both programs once (timed) and time the compiled executables themselves."""
    import jax

    t0 = time.perf_counter()
    fwd = bench.fwd.lower(*bench.args).compile()
    t1 = time.perf_counter()
    fwd_bwd = bench.fwd_bwd.lower(*bench.args).compile()
    t2 = time.perf_counter()
    try:
        mem = fwd_bwd.memory_analysis()
        memory = int(mem.temp_size_in_bytes + mem.output_size_in_bytes)
    except Exception:  # not every backend reports it
        memory = None
    run = lambda f: (lambda: jax.block_until_ready(f(*bench.args)))
    return run(fwd), run(fwd_bwd), {"compile_fwd_s": t1 - t0, "compile_s": t2 - t1, "memory_bytes": memory}


def prepare(impl: str, cell: str, cfg: Config, device: str):
    """``(row, fwd, fwd_bwd)``: compiled thunks, or ``(row with "missing", None, None)``."""
    row = {"impl": impl, "cell": cell, **dataclasses.asdict(cfg)}
    try:
        bench = IMPLEMENTATIONS[impl](cell, cfg, device)
        if bench.kind == "jax":
            fwd, fwd_bwd, extra = _compiled(bench)
        else:
            fwd, fwd_bwd, extra = bench.fwd, bench.fwd_bwd, {"compile_s": None, "memory_bytes": None}
    except Missing as e:
        return {**row, "missing": str(e)}, None, None
    except Exception as e:  # an anchor that breaks is reported, not fatal
        return {**row, "missing": f"error: {type(e).__name__}: {str(e).splitlines()[0][:100]}"}, None, None
    row.update(extra)
    return row, fwd, fwd_bwd


def measure(cell: str, cfg: Config, impls: list, device: str, reps: int) -> list:
    """Every implementation of one configuration, timed interleaved.

    Each round times every implementation's forward and forward+backward once, right
    after an untimed call of the same program, so a slow spell of this shared machine hits
    all of them alike and none pays for the one before it; each time is the median over
    the rounds. Long configurations get fewer rounds (at least 3, about 20 s of each).
    """
    prepared = [prepare(impl, cell, cfg, device) for impl in impls]
    thunks = [(row, f) for row, fwd, fwd_bwd in prepared if fwd is not None
              for f in (("fwd_ms", fwd), ("fwd_bwd_ms", fwd_bwd))]
    for _, (_, f) in thunks:
        f()  # warm: compiled, caches filled
    t0 = time.perf_counter()
    for _, (_, f) in thunks:
        f()
    once = 2 * (time.perf_counter() - t0)  # each round calls every thunk twice
    rounds = max(3, min(reps, int(20.0 * max(1, len(thunks) // 2) / max(once, 1e-6))))
    if device == "gpu" and any(row["impl"] == "torch" for row, _ in thunks):
        import torch

        torch.cuda.reset_peak_memory_stats()  # only torch allocates through torch's allocator
    times = [[] for _ in thunks]
    for _ in range(rounds):
        for (_, (_, f)), ts in zip(thunks, times):
            # The first call after another implementation is not timed: torch's OpenMP
            # threads keep spinning after it returns and slowed whatever ran next by up to
            # 40% (measured; the LSTM forward at B=8 went from 14 to 20 ms).
            f()
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
    for (row, (key, _)), ts in zip(thunks, times):
        row[key] = 1e3 * statistics.median(ts)
        if row["impl"] == "torch" and device == "gpu":
            row["memory_bytes"] = int(torch.cuda.max_memory_allocated())
    return [row for row, _, _ in prepared]


def machine(device: str) -> dict:
    import jax

    info = {"device": device, "platform": platform.platform(), "python": platform.python_version(),
            "jax": jax.__version__, "jax_devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    for lib in ("torch", "flax", "equinox", "haiku"):
        try:
            info[lib] = __import__(lib).__version__
        except Exception:
            info[lib] = "missing"
    if device == "gpu":
        info["gpu"] = str(jax.devices()[0].device_kind)
    return info


def markdown(rows: list, info: dict) -> str:
    """One table per (cell, configuration): each implementation's times and its ratio to recurrax."""
    out = [f"Machine: {info.get('gpu', info['cpu'])}, {info['cpu_count']} cores; jax {info['jax']}, torch "
           f"{info['torch']}, flax {info['flax']}, equinox {info['equinox']}, haiku {info['haiku']}.", "",
           "Ratios are anchor time / recurrax time (above 1: recurrax is faster).", ""]
    groups = {}
    for r in rows:
        groups.setdefault((r["cell"], r["B"], r["T"], r["I"], r["H"], r["dtype"]), []).append(r)
    for (cell, B, T, I, H, dtype), rs in groups.items():
        ref = next((r for r in rs if r["impl"] == "recurrax" and "fwd_ms" in r), None)
        out += [f"**{cell}**, B={B} T={T} I={I} H={H} {dtype}", "",
                "| implementation | forward ms | fwd+bwd ms | ratio fwd | ratio fwd+bwd | compile s "
                "| fwd+bwd memory MB |",
                "|---|---|---|---|---|---|---|"]
        for r in rs:
            if "missing" in r:
                out.append(f"| {r['impl']} | missing: {r['missing']} | | | | | |")
                continue
            ratio = lambda k: f"{r[k] / ref[k]:.2f}" if ref else "-"
            comp = f"{r['compile_s']:.2f}" if r.get("compile_s") is not None else "-"
            mem = f"{r['memory_bytes'] / 2**20:.1f}" if r.get("memory_bytes") else "-"
            out.append(f"| {r['impl']} | {r['fwd_ms']:.2f} | {r['fwd_bwd_ms']:.2f} | {ratio('fwd_ms')} | "
                       f"{ratio('fwd_bwd_ms')} | {comp} | {mem} |")
        out.append("")
    return "\n".join(out)


def plot(rows: list, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    sweep = [r for r in rows if r["cell"] == "lstm" and r["B"] == 32 and r["H"] == 256 and r["dtype"] == "float32"
             and "fwd_bwd_ms" in r]
    if len({r["T"] for r in sweep}) < 3:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for impl in sorted({r["impl"] for r in sweep}):
        pts = sorted((r["T"], r["fwd_bwd_ms"]) for r in sweep if r["impl"] == impl)
        ax.loglog(*zip(*pts), marker="o", label=impl)
    ax.set(xlabel="T", ylabel="forward+backward ms", title="LSTM, B=32, H=256: cost against T")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=["main", "sweeps", "gpu", "small", "placement", "backward", "all"],
                        default="main")
    parser.add_argument("--device", choices=["cpu", "gpu"], default=None, help="default: what JAX runs on")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="fewer sweep points")
    parser.add_argument("--impl", action="append", help="only these implementations (repeatable)")
    parser.add_argument("--cell", action="append", choices=CELLS, help="only these cells (repeatable)")
    parser.add_argument("--out", help="the directory for the results (default: benchmarks/results/<today>)")
    parser.add_argument("--baseline", metavar="REV",
                        help="a git revision (or a directory) of recurrax to time beside this one")
    args = parser.parse_args(argv)
    args.command = shlex.join(["python", "-m", "benchmarks", *(sys.argv[1:] if argv is None else argv)])
    with contextlib.ExitStack() as stack:  # removes --baseline's temporary copy on exit
        return run(args, stack)


def run(args, stack: contextlib.ExitStack) -> int:
    import jax

    import recurrax  # noqa: F401  (imported first, so --baseline's copy loads beside it)

    label = ""
    if args.baseline:
        name, module, note, label = baseline(args.baseline, stack)
        IMPLEMENTATIONS[name] = functools.partial(build_recurrax, module=module)
        ANCHOR_NOTES[name] = note
        label = "-baseline-" + re.sub(r"[^A-Za-z0-9_.]+", "_", label)  # HEAD~1 -> HEAD_1

    device = args.device or ("gpu" if jax.default_backend() == "gpu" else "cpu")
    info = machine(device)
    impls = args.impl or list(IMPLEMENTATIONS)
    today = datetime.date.today().isoformat()
    out = args.out or os.path.join(REPO, "benchmarks", "results", today)
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, f"{device}-{args.suite}{label}" + "".join(f"-{c}" for c in args.cell or ()))
    rows = []
    for cell, cfg in suites(device, args.quick)[args.suite]:
        if args.cell and cell not in args.cell:
            continue
        for row in measure(cell, cfg, impls, device, args.reps):
            rows.append(row)
            shown = row.get("missing") or f"fwd {row['fwd_ms']:.2f} ms, fwd+bwd {row['fwd_bwd_ms']:.2f} ms"
            print(f"{cell:6s} B={cfg.B} T={cfg.T} H={cfg.H} {cfg.dtype:8s} {row['impl']:24s} {shown}", flush=True)
        with open(stem + ".json", "w") as f:  # after every configuration: a run cut short keeps what it measured
            json.dump({"date": today, "command": args.command, "machine": info, "anchors": ANCHOR_NOTES, "rows": rows},
                      f, indent=1)
    table = markdown(rows, info)
    with open(stem + ".md", "w") as f:
        f.write(table + "\n")
    plot(rows, stem + "-T.png")
    print("\n" + table)
    print(f"\nwritten: {stem}.json, {stem}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
