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
    rows = measure("lstm", cfg, ["limit", "limit (one product)", "recurrax (vmap)"], "cpu", reps=3)
    assert all(r["fwd_ms"] > 0 for r in rows)


def test_the_limit_rows_compute_the_same_products_up_front_or_as_one():
    """Both limit rows of a cell whose products can be merged compute the same recurrence."""
    import jax

    from benchmarks.anchors import build_limit

    cfg = Config(B=2, T=4, I=3, H=5)
    for cell in ("rnn", "lstm", "gru", "gru_ra"):
        before, joint = (build_limit(cell, cfg, "cpu", one_product=one) for one in (False, True))
        assert before.fwd(*before.args).shape == (2, 4, 5)
        if cell != "gru_ra":  # its one product has a fourth block (zeros beside W_n), another recurrence
            assert jax.numpy.allclose(before.fwd(*before.args), joint.fwd(*joint.args), atol=1e-6)
        kH = 5 * {"rnn": 1, "lstm": 4, "gru": 3, "gru_ra": 3}[cell]  # the gradient reaches U, W and the inputs
        assert [g.shape for g in jax.tree.leaves(before.fwd_bwd(*before.args)[1])] == [(3, kH), (5, kH), (2, 4, 3)]


def test_baseline_revision_is_extracted_with_git_archive_and_loads_beside_recurrax(tmp_path):
    import subprocess
    import sys

    import jax
    import pytest

    import recurrax
    from benchmarks.anchors import build_recurrax
    from benchmarks.run import REPO, load_baseline, materialise

    if subprocess.run(["git", "rev-parse", "--verify", "HEAD"], cwd=REPO, capture_output=True).returncode:
        pytest.skip("not a git checkout")
    commit = materialise("HEAD", str(tmp_path))
    assert len(commit) == 40 and (tmp_path / "recurrax" / "__init__.py").is_file()
    baseline = load_baseline(str(tmp_path))
    assert baseline is not recurrax and sys.modules["recurrax"] is recurrax
    assert baseline.__file__ == str(tmp_path / "recurrax" / "__init__.py")
    assert baseline.LSTM is not recurrax.LSTM and baseline.scan is not recurrax.scan
    cfg = Config(B=2, T=4, I=3, H=5)  # the batch form, as the recurrax row runs it
    old, new = (build_recurrax("lstm", cfg, "cpu", module=m) for m in (baseline, recurrax))
    assert jax.numpy.allclose(old.fwd(*old.args), new.fwd(*new.args))


def test_every_results_file_follows_the_one_layout():
    """``benchmarks/results/<YYYY-MM-DD>/<device>-<suite>[-<label>].{json,md,png}``, a JSON's date its folder's."""
    import datetime
    import json
    import pathlib
    import re

    results = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "results"
    name = re.compile(r"(cpu|gpu|tpu)-[a-z_]+(-[A-Za-z0-9_.-]+)?\.(json|md|png)")
    files = [p for p in results.rglob("*") if p.is_file()]
    assert files, "no results"
    for p in files:
        parts = p.relative_to(results).parts
        assert len(parts) == 2 and name.fullmatch(parts[1]), f"not <YYYY-MM-DD>/<device>-<suite>[-<label>].*: {p}"
        day = parts[0]
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", day) and datetime.date.fromisoformat(day), p
        if p.suffix == ".json":
            assert json.loads(p.read_text()).get("date", day) == day, f"{p}: its date is not its folder's"


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
