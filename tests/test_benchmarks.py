"""The benchmark runner works on a CPU (the GPU script runs the same code): tiny sizes."""

import importlib.util

from benchmarks.anchors import Config
from benchmarks.run import machine, markdown, measure


def test_runner_measures_recurrax_and_reports_missing_anchors():
    cfg = Config(B=2, T=4, I=3, H=5)
    rows = measure("lstm", cfg, ["recurrax", "jax.experimental.rnn", "torch"], "cpu", reps=3)
    rows += measure("gru", cfg, ["torch"], "cpu", reps=3)
    ok, torch_lstm = rows[0], rows[2]
    assert ok["fwd_ms"] > 0 and ok["fwd_bwd_ms"] > 0 and ok["compile_s"] > 0 and ok["memory_bytes"] > 0
    assert rows[1]["missing"] == "jax.experimental.rnn.lstm needs cuDNN (GPU)"
    if importlib.util.find_spec("torch") is not None:  # an optional anchor
        assert torch_lstm["fwd_ms"] > 0 and torch_lstm["fwd_bwd_ms"] > 0 and torch_lstm["compile_s"] is None
    assert rows[3]["missing"] == "torch has no reset-before GRU"
    table = markdown(rows, machine("cpu"))
    assert "| recurrax |" in table and "1.00 | 1.00" in table and "missing: torch has no reset-before GRU" in table


def test_baseline_copy_loads_beside_the_current_package_and_the_limit_row_runs():
    import os
    import sys

    import jax

    import recurrax
    from benchmarks.anchors import build_recurrax
    from benchmarks.run import load_baseline

    baseline = load_baseline(os.path.dirname(os.path.dirname(recurrax.__file__)))
    assert baseline is not recurrax and sys.modules["recurrax"] is recurrax
    assert baseline.scan.__module__ == "recurrax._core._scan" and baseline.scan is not recurrax.scan
    cfg = Config(B=2, T=4, I=3, H=5)
    old, new = (build_recurrax("gru", cfg, "cpu", module=m, form="vmap") for m in (baseline, recurrax))
    assert jax.numpy.allclose(old.fwd(*old.args), new.fwd(*new.args))
    rows = measure("lstm", cfg, ["limit", "recurrax (vmap)"], "cpu", reps=3)
    assert all(r["fwd_ms"] > 0 for r in rows)


def test_packed_benchmark_prints_every_variant(capsys):
    from benchmarks import packed

    assert packed.main(["--reps", "1", "--B", "2", "--T", "4"]) == 0
    out = capsys.readouterr().out
    for variant in ("plain", "resets", "Dropout, key", "Dropout, no key", "Zoneout, key"):
        assert f"| {variant} |" in out
    assert "| plain | " in out and "| 1.00 | 1.00 |" in out


def test_packed_benchmark_compares_the_existing_paths_with_a_baseline_copy():
    import os

    import recurrax
    from benchmarks import packed
    from benchmarks.run import load_baseline

    rows = packed.same_programs(load_baseline(os.path.dirname(os.path.dirname(recurrax.__file__))))
    assert len(rows) == 12 and all(f and g for _, _, f, g in rows)
