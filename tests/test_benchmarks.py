"""The benchmark runner works on a CPU (the GPU script runs the same code): tiny sizes."""

from benchmarks.anchors import Config
from benchmarks.run import machine, markdown, measure


def test_runner_measures_recurrax_and_reports_missing_anchors():
    cfg = Config(B=2, T=4, I=3, H=5)
    rows = [measure(impl, "lstm", cfg, "cpu", reps=3) for impl in ("recurrax", "jax.experimental.rnn")]
    rows.append(measure("torch", "gru", cfg, "cpu", reps=3))
    ok = rows[0]
    assert ok["fwd_ms"] > 0 and ok["fwd_bwd_ms"] > 0 and ok["compile_s"] > 0 and ok["memory_bytes"] > 0
    assert rows[1]["missing"] == "jax.experimental.rnn.lstm needs cuDNN (GPU)"
    assert rows[2]["missing"] == "torch has no reset-before GRU"
    table = markdown(rows, machine("cpu"))
    assert "| recurrax |" in table and "1.00 | 1.00" in table and "missing: torch has no reset-before GRU" in table
