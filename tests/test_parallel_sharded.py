"""parallel_scan(axis_name=...) inside jax.shard_map on 4 host devices equals the unsharded call.

Each test runs a script in a subprocess (the device count is fixed when JAX starts): float64,
a batch of 2 with lengths 32 and 13 (13 ends inside the second of four shards of 8 steps),
packed sequences (resets, a length-1 segment, one on the first step of a shard, one in
the padding), forwards and in reverse.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

PRELUDE = textwrap.dedent("""
    import json, re, jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    import recurrax
    from jax.sharding import Mesh, PartitionSpec as P
    from tests.zoo import DOCS_CELLS
    assert len(jax.devices()) == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("time",))
    T, I, H = 32, 3, 5  # H = 5: no state dimension is 8 or 32 (the HLO check)
    CELLS = {"rnn": recurrax.RNN(H), "lstm": recurrax.LSTM(H), "gru": recurrax.GRU(H), "min_gru": recurrax.MinGRU(H),
             "min_lstm": recurrax.MinLSTM(H), "indrnn": DOCS_CELLS.IndRNN(H)}
    RESETS = np.zeros((T, 2), bool)
    RESETS[[0, 7, 8, 16, 20], 0] = True  # 7 alone; 8 and 16 open a shard
    RESETS[[3, 12, 14, 25], 1] = True  # 25 is padding (length 13)

    def setup(name):
        cell = CELLS[name]
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), cell.init(jax.random.key(0), I))
        xs = jax.random.normal(jax.random.key(1), (T, 2, I), jnp.float64)
        carry = jax.tree.map(lambda c: c + 0.3, cell.initial_carry((2,), jnp.float64))
        return cell, params, xs, carry

    def runs(cell, method, reverse, resets):
        kw = dict(method=method, reverse=reverse, length=jnp.array([T, 13]))
        resets = jnp.asarray(RESETS) if resets else None
        def sharded(params, xs, carry, resets):
            return recurrax.parallel_scan(cell, params, xs, carry, resets=resets, axis_name="time", **kw)
        specs = dict(in_specs=(P(), P("time"), P(), P("time") if resets is not None else P()),
                     out_specs=(P(), P("time"), P()))
        sharded = jax.shard_map(sharded, mesh=mesh, **specs)
        return (lambda p, x, c: sharded(p, x, c, resets),
                lambda p, x, c: recurrax.parallel_scan(cell, p, x, c, resets=resets, **kw))

    def loss(run):
        def value(p, x, c):
            final, ys, info = run(p, x, c)
            return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(a * a) for a in jax.tree.leaves(final))
        return jax.jit(jax.grad(value, argnums=(0, 1, 2)))

    def gap(a, b):
        return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
                   for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    out = {}
    for name, method, reverse, resets, grads in CASES:
        cell, params, xs, carry = setup(name)
        sharded, whole = runs(cell, method, reverse, resets)
        got, expected = jax.jit(sharded)(params, xs, carry), whole(params, xs, carry)
        row = {"values": gap(got[:2], expected[:2]), "info": gap(got[2], expected[2]),
               "converged": bool(np.all(got[2].converged)), "fell_back": bool(np.any(got[2].fell_back)),
               "iterations": np.asarray(got[2].iterations).tolist()}
        if grads:
            row["grads"] = gap(loss(sharded)(params, xs, carry), loss(whole)(params, xs, carry))
        out[f"{name} {method} reverse={reverse} resets={resets}"] = row
""")


def run_on_four_devices(cases, extra=""):
    # as tests/conftest.py: unoptimised compiles unless the caller says otherwise
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
           "JAX_DISABLE_MOST_OPTIMIZATIONS": os.environ.get("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")}
    script = f"CASES = {cases!r}\n" + PRELUDE + textwrap.dedent(extra) + "\nprint(json.dumps(out))\n"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=900,
                         cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def check(out, converge=True):
    for case, row in out.items():
        if case == "hlo":
            continue
        assert row["values"] <= 1e-9 and row["info"] <= 1e-9, (case, row)
        assert row.get("grads", 0.0) <= 1e-8, (case, row)
        assert row["converged"] and not row["fell_back"], (case, row)


HLO_CHECK = """
    # The compiled sharded call (forward and gradient) moves no [T, ...] array between devices:
    # no all-gather at all, and no collective whose operand has a T- or L-sized dimension.
    # Optimised, as users' programs are compiled.
    jax.config.update("jax_disable_most_optimizations", False)
    cell, params, xs, carry = setup("lstm")
    sharded, _ = runs(cell, "deer", False, True)
    texts = [jax.jit(sharded).lower(params, xs, carry).compile().as_text(),
             loss(sharded).lower(params, xs, carry).compile().as_text()]
    collectives = [line for text in texts for line in text.splitlines()
                   if re.search(r"= \\S+ (all-gather|all-reduce|collective-permute|all-to-all)(-start)?\\(", line)]
    shapes = [[int(d) for d in dims.split(",") if d] for line in collectives
              for dims in re.findall(r"\\[([0-9,]*)\\]", line)]
    out["hlo"] = {"collectives": len(collectives), "all_gathers": sum("all-gather" in c for c in collectives),
                  "dims": sorted({d for s in shapes for d in s})}
"""


def test_every_method_on_lstm_and_hlo_has_no_gather_of_time():
    cases = [("lstm", m, False, True, False) for m in ("deer", "quasi-deer", "quasi-deer-block", "elk")]
    cases += [("lstm", "elk", True, True, False), ("lstm", "quasi-deer-block", True, False, False)]
    out = run_on_four_devices(cases, HLO_CHECK)
    check(out)
    hlo = out.pop("hlo")
    assert hlo["collectives"] > 0 and hlo["all_gathers"] == 0, hlo
    assert 32 not in hlo["dims"] and 8 not in hlo["dims"], hlo  # T = 32 steps, 8 per device


@pytest.mark.parametrize("group", ["lstm and gru", "min cells and the docs' IndRNN"])
def test_values_and_gradients_equal_unsharded(group):
    if group == "lstm and gru":
        cases = [("lstm", "deer", False, True, True), ("lstm", "quasi-deer", True, True, True),
                 ("gru", "deer", True, False, True), ("rnn", "quasi-deer", False, True, True)]
    else:
        cases = [("min_gru", "deer", False, True, True), ("min_lstm", "quasi-deer", True, True, True),
                 ("indrnn", "deer", False, True, True), ("indrnn", "quasi-deer", True, False, True)]
    check(run_on_four_devices(cases))
