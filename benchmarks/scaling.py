"""Time-parallel ``parallel_scan(axis_name=...)`` on 1, 2, 4, 8 host devices: time, iterations, bytes moved.

    python benchmarks/scaling.py [--devices 1 2 4 8] [--T 2048] [--H 16] [--methods quasi-deer deer]

For each device count ``D`` a subprocess starts JAX with
``XLA_FLAGS=--xla_force_host_platform_device_count=D`` (the count is fixed when JAX starts),
splits one GRU sequence (``T`` steps, ``N(0, 1)`` inputs, 4 features, untrained weights,
float32) along time over a ``Mesh`` of the ``D`` devices with ``jax.shard_map``, and runs
``parallel_scan(..., axis_name="time")`` compiled. It reports:

- ``ms``: the median wall time of ``--reps`` calls (compile excluded);
- ``iterations``: ``info.iterations``;
- per Newton iteration, from the compiled HLO text: the collectives inside the body of
  the Newton ``while`` loop (reached through nested computations) and the bytes of their
  operands per device (``collective-permute``: the affine maps and boundary states of the
  cross-device scan; ``all-reduce``: the convergence test).

On one machine the "devices" share its cores, so the wall time measures overhead, not
speed-up; the bytes and the counts are what a real pod would move (docs/scaling.md turns
them into a cost model). Prints a Markdown table and writes
``benchmarks/results/<YYYY-MM-DD>/<device>-scaling.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
BYTES = {"f64": 8, "f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "s8": 1, "u8": 1, "pred": 1, "s64": 8}
COLLECTIVE = re.compile(r"= (\([^=]*\)|\S+) (all-reduce|collective-permute|all-gather|all-to-all|reduce-scatter)"
                        r"(-start)?\(")


def collectives_per_iteration(hlo: str) -> dict:
    """The collectives reachable from the body of the ``while`` loop that holds the most of
    them (the Newton iterations), with their operand bytes per device."""
    computations, name = {}, None
    for line in hlo.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
        if header:
            name = header.group(1)
            computations[name] = []
        elif name is not None:
            computations[name].append(line)

    def reachable(root, seen):
        if root in seen or root not in computations:
            return []
        seen.add(root)
        found = [line for line in computations[root] if COLLECTIVE.search(line)]
        for line in computations[root]:
            for callee in re.findall(r"(?:calls|to_apply|body|condition|branch_computations|true_computation|"
                                     r"false_computation)=\{?%?([\w.\-]+(?:, %?[\w.\-]+)*)\}?", line):
                for c in callee.split(","):
                    found += reachable(c.strip().lstrip("%"), seen)
        return found

    best = []
    for lines in computations.values():
        for line in lines:
            body = re.search(r" while\(.*body=%?([\w.\-]+)", line)
            if body:
                found = reachable(body.group(1), set())
                best = found if len(found) > len(best) else best
    kinds, total = {}, 0
    for line in best:
        match = COLLECTIVE.search(line)
        size = sum(BYTES.get(dtype, 4) * math.prod(int(d) for d in dims.split(",") if d)
                   for dtype, dims in re.findall(r"(\w+)\[([0-9,]*)\]", match.group(1)))
        kinds[match.group(2)] = kinds.get(match.group(2), 0) + 1
        total += size
    return {"collectives": kinds, "bytes": total}


CHILD = """
import json, statistics, sys, time
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, PartitionSpec as P
import recurrax
from benchmarks.scaling import collectives_per_iteration
D, T, H, reps, methods = json.loads(sys.argv[1])
assert len(jax.devices()) == D, jax.devices()
mesh = Mesh(np.array(jax.devices()), ("time",))
cell = recurrax.GRU(H)
params = cell.init(jax.random.key(0), 4)
xs = jax.random.normal(jax.random.key(1), (T, 4))
rows = []
for method in methods:
    run = jax.jit(jax.shard_map(lambda p, x: recurrax.parallel_scan(cell, p, x, method=method, axis_name="time"),
                                mesh=mesh, in_specs=(P(), P("time")), out_specs=(P(), P("time"), P())))
    t0 = time.perf_counter()
    compiled = run.lower(params, xs).compile()
    compile_s = time.perf_counter() - t0
    info = jax.block_until_ready(compiled(params, xs))[2]
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(params, xs))
        times.append(time.perf_counter() - t0)
    rows.append({"devices": D, "method": method, "ms": 1e3 * statistics.median(times), "compile_s": compile_s,
                 "iterations": int(info.iterations), "converged": bool(info.converged),
                 **collectives_per_iteration(compiled.as_text())})
print(json.dumps(rows))
"""


def run(devices, T, H, reps, methods) -> list:
    rows = []
    for D in devices:
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={D}", "JAX_PLATFORMS": "cpu",
               "PYTHONPATH": ROOT}
        out = subprocess.run([sys.executable, "-c", CHILD, json.dumps([D, T, H, reps, methods])], env=env, cwd=ROOT,
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-3000:])
        for row in json.loads(out.stdout.strip().splitlines()[-1]):
            rows.append(row)
            print(row, flush=True)
    return rows


def table(rows) -> str:
    lines = ["| devices | method | ms | iterations | collectives per iteration | bytes per iteration | compile s |",
             "|---" * 7 + "|"]
    for r in rows:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(r["collectives"].items())) or "none"
        lines.append(f"| {r['devices']} | {r['method']} | {r['ms']:.1f} | {r['iterations']} | {kinds} | "
                     f"{r['bytes']} | {r['compile_s']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--T", type=int, default=2048, help="sequence length (a multiple of every device count)")
    parser.add_argument("--H", type=int, default=16, help="the GRU's hidden size")
    parser.add_argument("--reps", type=int, default=5, help="timed calls (median)")
    parser.add_argument("--methods", nargs="+", default=["quasi-deer", "deer"])
    parser.add_argument("--out", help="the directory for the JSON (default: benchmarks/results/<today>)")
    args = parser.parse_args(argv)
    if any(args.T % d for d in args.devices):
        parser.error(f"--T {args.T} must be a multiple of every device count {args.devices}")
    t0 = time.perf_counter()
    rows = run(args.devices, args.T, args.H, args.reps, args.methods)
    print("\n" + table(rows) + f"\n\ntotal {time.perf_counter() - t0:.0f} s")
    today = datetime.date.today().isoformat()
    out = args.out or os.path.join(RESULTS, today)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "cpu-scaling.json")
    command = shlex.join(["python", "benchmarks/scaling.py", *(sys.argv[1:] if argv is None else argv)])
    with open(path, "w") as f:
        json.dump({"date": today, "command": command, "args": vars(args), "rows": rows}, f, indent=1)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
