"""Sequential ``recurrax.scan`` against ``parallel_scan`` (DEER, quasi-DEER) and min_gru's single pass.

    python benchmarks/parallel.py [--quick] [--reps 5] [--T 1000 10000] [--H 4 16]

One example (no batch: parallel-in-time methods are for when the batch cannot fill the
machine), time-major, inputs from the adding problem (``recurrax.tasks.adding_problem``,
2 features). For every hidden size ``H`` and length ``T`` it times, on JAX's default
device (a GPU when one is present):

- a GRU (the lecture's form) run sequentially by ``recurrax.scan`` and in parallel by
  ``parallel_scan(method="deer")`` and ``method="quasi-deer"``, with untrained weights
  (the default initialisation) AND trained ones (``--train-steps`` Adam steps on the
  adding problem with T=50, inside this script), because the number of Newton iterations
  depends on how strongly the trained recurrence contracts;
- ``min_gru`` by ``recurrax.scan`` and by ``parallel_scan`` (one associative scan).

Each timing is the median of ``--reps`` calls of a compiled function
(``jax.jit(...).lower().compile()``, compile time reported separately) with
``block_until_ready``. The speed-up is sequential time / parallel time (above 1: parallel
is faster). DEER is skipped where its ``[T, H, H]`` Jacobians would exceed
``--deer-max-elements``. A run that did not converge within ``max_iters`` falls back to the
sequential scan (its time includes both) and is marked. Prints Markdown tables and writes
``benchmarks/results/<YYYY-MM-DD>/<device>-parallel.json`` (the day of the run; ``--out DIR``:
``DIR/<device>-parallel.json``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import optax

import recurrax
import recurrax.tasks
from recurrax import MinGRU, parallel_scan

I = 2  # the adding problem's features: a value and a marker
FULL = {"T": [1_000, 10_000, 100_000], "H": [1, 4, 16, 64]}
QUICK = {"T": [1_000, 10_000], "H": [4, 16, 64]}
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def machine() -> dict:
    device = jax.devices()[0]
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"device": device.platform, "device_kind": device.device_kind, "cpu": cpu,
            "cpu_count": os.cpu_count(), "jax": jax.__version__, "python": platform.python_version()}


def compile_and_time(fn, args_list, reps: int):
    """Compile ``fn`` once (timed), then the median ms of ``reps`` calls for each args."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args_list[0]).compile()
    compile_s = time.perf_counter() - t0
    results = []
    for args in args_list:
        out = jax.block_until_ready(compiled(*args))  # warm
        once = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        once = time.perf_counter() - once
        times = []
        for _ in range(max(3, min(reps, int(10.0 / max(once, 1e-6))))):  # slow ones: fewer repeats
            t = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            times.append(time.perf_counter() - t)
        results.append((1e3 * statistics.median(times), out))
    return compile_s, results


def train_gru(H: int, key, steps: int, T: int = 50, batch: int = 64):
    """A GRU + linear readout trained on the adding problem; returns the cell's params and the last MSE."""
    cell = recurrax.GRU(H)
    k_init, k_data = jax.random.split(key)
    params = {"cell": cell.init(k_init, I), "w": jnp.zeros(H), "c": jnp.ones(())}
    opt = optax.adam(1e-2)

    def loss(params, xs, y):
        h = jax.vmap(lambda x: recurrax.scan(cell, params["cell"], x)[0])(xs)
        return jnp.mean((h @ params["w"] + params["c"] - y) ** 2)

    @jax.jit
    def update(params, state, key):
        xs, y = recurrax.tasks.adding_problem(key, batch, T)
        value, grads = jax.value_and_grad(loss)(params, xs, y)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    state = opt.init(params)
    for k in jax.random.split(k_data, steps):
        params, state, value = update(params, state, k)
    return params["cell"], float(value)


def parallel_entry(ms: float, out, seq_ms: float) -> dict:
    info = out[2]
    return {"ms": ms, "speedup": seq_ms / ms, "iterations": int(info.iterations),
            "converged": bool(info.converged), "fell_back": bool(info.fell_back),
            "residual": float(info.residual)}


def run(Ts, Hs, reps: int, train_steps: int, deer_max: int) -> dict:
    rows, training = [], {}
    for H in Hs:
        key = jax.random.key(H)
        gru, mgru = recurrax.GRU(H), MinGRU(H)
        untrained, min_params = gru.init(key, I), mgru.init(key, I)
        trained, mse = train_gru(H, jax.random.fold_in(key, 1), train_steps)
        training[H] = {"steps": train_steps, "final_mse": mse, "mean_predictor_mse": 1 / 6}
        print(f"H={H}: trained GRU, adding problem T=50, final MSE {mse:.4f} (predicting the mean: 0.1667)", flush=True)
        for T in Ts:
            xs = recurrax.tasks.adding_problem(jax.random.fold_in(key, T), 1, T)[0][0]
            c_seq, [(seq_ms, _)] = compile_and_time(lambda p, x: recurrax.scan(gru, p, x), [(untrained, xs)], reps)
            entries = {w: {"cell": "gru", "weights": w, "H": H, "T": T, "scan_ms": seq_ms, "scan_compile_s": c_seq}
                       for w in ("untrained", "trained")}
            for method in ("deer", "quasi-deer"):
                if method == "deer" and T * H * H > deer_max:
                    for e in entries.values():
                        e[method] = None
                    continue
                fn = lambda p, x, method=method: parallel_scan(gru, p, x, method=method)  # noqa: E731
                c, timed = compile_and_time(fn, [(untrained, xs), (trained, xs)], reps)  # one compile, both weights
                for e, (ms, out) in zip(entries.values(), timed):
                    e[method] = {**parallel_entry(ms, out, seq_ms), "compile_s": c}
            rows += list(entries.values())

            c_seq, [(seq_ms, _)] = compile_and_time(lambda p, x: recurrax.scan(mgru, p, x), [(min_params, xs)], reps)
            c, [(ms, out)] = compile_and_time(lambda p, x: parallel_scan(mgru, p, x), [(min_params, xs)], reps)
            rows.append({"cell": "min_gru", "weights": "untrained", "H": H, "T": T, "scan_ms": seq_ms,
                         "scan_compile_s": c_seq, "parallel": {**parallel_entry(ms, out, seq_ms), "compile_s": c}})
            print(f"  T={T} done", flush=True)
    return {"rows": rows, "training": training}


def _cell(entry) -> str:
    if entry is None:
        return "skipped | | "
    mark = " (fell back)" if entry["fell_back"] else ""
    return f"{entry['ms']:.2f} | {entry['iterations']}{mark} | {entry['speedup']:.2f}x"


def tables(rows) -> str:
    out = ["| weights | H | T | scan ms | DEER ms | iters | speed-up | quasi-DEER ms | iters | speed-up |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["cell"] == "gru":
            out.append(f"| {r['weights']} | {r['H']} | {r['T']} | {r['scan_ms']:.2f} | {_cell(r['deer'])} | "
                       f"{_cell(r['quasi-deer'])} |")
    out += ["", "| min_gru, H | T | scan ms | one associative scan ms | speed-up |", "|---|---|---|---|---|"]
    for r in rows:
        if r["cell"] == "min_gru":
            p = r["parallel"]
            out.append(f"| {r['H']} | {r['T']} | {r['scan_ms']:.2f} | {p['ms']:.2f} | {p['speedup']:.2f}x |")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"T in {QUICK['T']}, H in {QUICK['H']} (under a minute on a 2-core CPU)")
    parser.add_argument("--T", type=int, nargs="+", help="sequence lengths (overrides the defaults)")
    parser.add_argument("--H", type=int, nargs="+", help="hidden sizes (overrides the defaults)")
    parser.add_argument("--reps", type=int, default=5, help="timed calls per measurement (median)")
    parser.add_argument("--train-steps", type=int, default=200, help="Adam steps for the trained GRU")
    parser.add_argument("--out", help="the directory for the JSON (default: benchmarks/results/<today>)")
    parser.add_argument("--deer-max-elements", type=int, default=None,
                        help="skip DEER where T*H*H exceeds this (default 2**25 on CPU, 2**28 on GPU)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    Ts, Hs = args.T or sizes["T"], args.H or sizes["H"]
    info = machine()
    deer_max = args.deer_max_elements or (2**25 if info["device"] == "cpu" else 2**28)
    print(f"device: {info['device_kind']} ({info['device']}), cpu: {info['cpu']} x{info['cpu_count']}, "
          f"jax {info['jax']}")
    t0 = time.perf_counter()
    result = run(Ts, Hs, args.reps, args.train_steps, deer_max)
    report = tables(result["rows"])
    print("\n" + report)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    today = datetime.date.today().isoformat()
    out = args.out or os.path.join(RESULTS, today)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"{info['device']}-parallel.json")
    command = shlex.join(["python", "benchmarks/parallel.py", *(sys.argv[1:] if argv is None else argv)])
    with open(path, "w") as f:
        json.dump({"date": today, "command": command, "machine": info, "args": vars(args), "T": Ts, "H": Hs,
                   "deer_max_elements": deer_max, "wall_s": time.perf_counter() - t0, **result}, f, indent=1)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
