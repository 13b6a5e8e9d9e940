"""Checkpoints that cannot be corrupted: fit resumes only its own run, exactly, and a
missing, foreign, empty or damaged checkpoint is refused with its path and what is wrong."""

import glob
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import recurrax
import recurrax.models
import recurrax.train
from recurrax import tasks
from tests.helpers import leaves_close

OPT = optax.sgd(0.1, momentum=0.9)  # not Adam: its b1 ** count needs standard promotion


def _init(hidden=4, seed=0):
    model = recurrax.models.sequence_classifier(recurrax.GRU(hidden), 1, features=2)
    return model, model.init(jax.random.key(seed))


@pytest.fixture(scope="module")
def run():
    """A tiny run's train step (compiled once for the module), starting params and batches."""
    model, params = _init()
    loss = lambda p, b: jnp.mean((jax.vmap(lambda x: model.apply(p, x)[0])(b[0]) - b[1]) ** 2)
    return recurrax.train.make_train_step(loss, OPT), params, lambda k: tasks.adding_problem(k, 8, 5)


def _fit(run, checkpoint=None, *, step=None, params=None, opt_state=None, batch_fn=None, **kw):
    step, params, batch_fn = step or run[0], params if params is not None else run[1], batch_fn or run[2]
    kw = {"steps": 6, "seed": 1, "eval_every": 2, "progress": False,
          "eval_fn": lambda p: {"v": jnp.sum(p["readout"].V)}, **kw}
    opt_state = OPT.init(params) if opt_state is None else opt_state
    return recurrax.train.fit(step, params, opt_state, batch_fn, checkpoint=checkpoint, **kw)


def _files(path):
    """Every file under ``path`` with its size and modification time."""
    return {f: (os.path.getsize(f), os.stat(f).st_mtime_ns) for f in glob.glob(f"{path}/**", recursive=True)
            if os.path.isfile(f)}


def _without_seconds(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


class Interrupted(Exception):
    pass


def test_an_interrupted_run_resumes_to_exactly_the_uninterrupted_result(run, tmp_path):
    full = _fit(run)
    calls = []

    def dies_in_step_5(key):
        if len(calls) == 5:
            raise Interrupted
        calls.append(key)
        return run[2](key)

    ck = str(tmp_path / "run")
    with pytest.raises(Interrupted):
        _fit(run, ck, batch_fn=dies_in_step_5, checkpoint_every=2)
    assert os.listdir(ck) == ["4"]  # the newest complete checkpoint, alone
    resumed = _fit(run, ck, checkpoint_every=2)
    leaves_close(full.params, resumed.params, atol=0)
    leaves_close(full.opt_state, resumed.opt_state, atol=0)
    # the history covers the whole run, the rows from before the interruption included
    assert [row["step"] for row in resumed.history] == [2, 4, 6]
    assert _without_seconds(resumed.history) == _without_seconds(full.history)
    seconds = [row["seconds"] for row in resumed.history]
    assert seconds == sorted(seconds)
    assert os.listdir(ck) == ["6"]


def test_rerunning_a_finished_run_returns_its_result_without_training_or_writing(run, tmp_path):
    ck = str(tmp_path / "run")
    first = _fit(run, ck)
    before, calls = _files(ck), []

    def counted(*args):
        calls.append(1)
        return run[0](*args)

    again = _fit(run, ck, step=counted)
    assert calls == [] and _files(ck) == before
    leaves_close(first.params, again.params, atol=0)
    leaves_close(first.opt_state, again.opt_state, atol=0)
    assert again.history == first.history and [row["step"] for row in again.history] == [2, 4, 6]


def test_fit_refuses_the_checkpoint_of_another_run_and_leaves_it_intact(run, tmp_path):
    ck = str(tmp_path / "run")
    done = _fit(run, ck)
    before = _files(ck)
    params = run[1]
    wider = _init(hidden=5)[1]
    cases = {
        "steps=6 there, steps=8 here": {"steps": 8},
        "seed=1 there, seed=2 here": {"seed": 2},
        r"another model or optimizer\): leaf \['opt_state'\]\[0\]\.trace\['encoder'\]\.U is float\d+\[2, 12\] in the "
        r"checkpoint, float\d+\[2, 15\] in this run": {"params": wider},
        r"another model or optimizer\): this run has leaves the checkpoint lacks \(\['opt_state'\]": {
            "opt_state": optax.adam(1e-2).init(params)},
        r"other values of \['params'\]\['encoder'\]\.U, .* \(another initialisation\)": {"params": _init(seed=1)[1]},
        r"its batches differ: leaf \[0\] is float\d+\[8, 5, 2\] in the checkpoint, float\d+\[16, 5, 2\]": {
            "batch_fn": lambda k: tasks.adding_problem(k, 16, 5)},
    }
    for message, change in cases.items():
        with pytest.raises(ValueError, match=f"checkpoint {re.escape(ck)} was written by another run: .*{message}"):
            _fit(run, ck, **change)
    assert _files(ck) == before
    leaves_close(done.params, _fit(run, ck).params, atol=0)


def _flip_a_byte(path):
    """Flip one bit in the middle of the largest array file under ``path``."""
    big = max(glob.glob(f"{path}/**/d/*", recursive=True), key=os.path.getsize)
    data = bytearray(open(big, "rb").read())
    data[len(data) // 2] ^= 1
    open(big, "wb").write(bytes(data))


def test_missing_foreign_empty_or_damaged_checkpoints_are_refused_with_the_path(tmp_path):
    import orbax.checkpoint as ocp

    tree = {"W": jax.random.normal(jax.random.key(0), (32, 32)), "b": jnp.ones(3)}

    def saved(name):
        return recurrax.train.save_checkpoint(tmp_path / name, tree)

    assert saved("ok") and recurrax.train.load_checkpoint(tmp_path / "ok", tree)["b"].tolist() == [1, 1, 1]
    (tmp_path / "random").write_bytes(os.urandom(100))
    (tmp_path / "zero").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("not a checkpoint")
    (tmp_path / "foreign" / "recurrax").mkdir()  # e.g. a source tree: a folder named recurrax/ is no checkpoint
    with ocp.StandardCheckpointer() as other:
        other.save(tmp_path / "orbax", tree)
    open(f"{saved('truncated_json')}/recurrax/metadata", "r+b").truncate(20)
    shutil.rmtree(f"{saved('no_arrays')}/state")
    truncated = max(glob.glob(f"{saved('truncated_arrays')}/**/d/*", recursive=True), key=os.path.getsize)
    open(truncated, "r+b").truncate(10)
    _flip_a_byte(saved("flipped"))
    cases = {
        "random": r"is a file \(100 bytes\), not a checkpoint",
        "zero": r"is a file \(0 bytes\), not a checkpoint",
        "empty": "is not a recurrax checkpoint: it is empty",
        "foreign": "is not a recurrax checkpoint: it holds notes.txt, recurrax,",
        "orbax": "is not a recurrax checkpoint: it holds _CHECKPOINT_METADATA",
        "truncated_json": r"is damaged: its description recurrax/ cannot be read \(JSONDecodeError",
        "no_arrays": r"is damaged: its arrays \(state/\) cannot be read",
        "truncated_arrays": r"is damaged: its arrays \(state/\) cannot be read",
        "flipped": r"is damaged: leaf \['W'\] does not hold the bytes that were saved",
    }
    for name, message in cases.items():
        with pytest.raises(ValueError, match=f"{re.escape(str(tmp_path / name))} {message}"):
            recurrax.train.load_checkpoint(tmp_path / name, tree)
    with pytest.raises(FileNotFoundError, match=f"checkpoint {re.escape(str(tmp_path / 'none'))} does not exist"):
        recurrax.train.load_checkpoint(tmp_path / "none", tree)
    with pytest.raises(ValueError, match=f"{re.escape(str(tmp_path / 'ok'))} already exists and is never overwritten"):
        recurrax.train.save_checkpoint(tmp_path / "ok", tree)


def test_fit_refuses_foreign_or_damaged_checkpoints_and_starts_afresh_in_an_empty_one(run, tmp_path):
    (tmp_path / "file").write_bytes(b"")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "plot.png").write_bytes(b"")
    recurrax.train.save_checkpoint(tmp_path / "saved", {"params": run[1]})
    done = _fit(run, tmp_path / "run")
    # load_checkpoint reads fit's newest step
    state = recurrax.train.load_checkpoint(tmp_path / "run", {"params": run[1], "opt_state": OPT.init(run[1])})
    leaves_close(done.params, state["params"], atol=0)
    open(tmp_path / "run" / "6" / "recurrax" / "metadata", "r+b").truncate(20)
    cases = {
        "file": r"is a file \(0 bytes\)",
        "foreign": "is not a recurrax checkpoint: it holds plot.png",
        "saved": "was written by save_checkpoint, not by fit",
        "run": r"/6 is damaged: its description recurrax/ cannot be read",
    }
    for name, message in cases.items():
        with pytest.raises(ValueError, match=f"{re.escape(str(tmp_path / name))}.*{message}"):
            _fit(run, tmp_path / name)
    # a new or empty directory, or one that holds only an interrupted save, is a fresh start
    (tmp_path / "fresh" / "4.orbax-checkpoint-tmp").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    for name in ("fresh", "empty"):
        result = _fit(run, tmp_path / name)
        leaves_close(done.params, result.params, atol=0)
        assert os.listdir(tmp_path / name) == ["6"]



def test_a_run_whose_state_starts_at_inf_resumes(tmp_path):
    # an optimizer state may start at inf (the best loss so far); the starting point still matches
    params = {"w": jnp.array([1.0, jnp.inf])}
    step = lambda p, s, b: (p, s, jnp.sum(b))  # noqa: E731 (no compilation: the test is about the checkpoint)
    first = recurrax.train.fit(
        step, params, (), lambda k: jnp.ones(2), steps=2, progress=False, checkpoint=tmp_path / "r"
    )
    again = recurrax.train.fit(
        step, params, (), lambda k: jnp.ones(2), steps=2, progress=False, checkpoint=tmp_path / "r"
    )
    assert again.history == first.history and np.isinf(np.asarray(again.params["w"])[1])


def test_the_demo_clears_its_previous_checkpoint_so_that_each_run_starts_afresh(tmp_path):
    from recurrax._apps import _demo

    old = tmp_path / "adding_gru_T4" / "2"
    old.mkdir(parents=True)
    assert _demo._checkpoint(str(tmp_path), "adding_gru_T4") == str(tmp_path / "adding_gru_T4")
    assert not (tmp_path / "adding_gru_T4").exists()
