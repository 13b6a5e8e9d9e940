"""Training with Optax: a jitted (optionally data-parallel) step, a fit loop, checkpoints.

Training follows the lecture's loop (initialise; iterate over data: compute y_hat,
compute L, update every weight ``w <- w - eta dL/dw``; until satisfied), with the update
left to any ``optax.GradientTransformation`` (``optax.sgd`` is the lecture's rule;
``optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))`` tames exploding
gradients).
"""

from __future__ import annotations

import contextlib
import hashlib
import operator
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

if TYPE_CHECKING:  # optax is imported lazily, so that `import recurrax` does not need it
    import optax

TrainStep = Callable[[Any, Any, Any], tuple[Any, Any, jax.Array]]


def make_train_step(
    loss_fn: Callable[[Any, Any], jax.Array],
    optimizer: optax.GradientTransformation,
    *,
    mesh: Mesh | None = None,
) -> TrainStep:
    """A compiled training step ``step(params, opt_state, batch) -> (params, opt_state, loss)``.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, the mean loss of the batch.
      optimizer: any ``optax.GradientTransformation``.
      mesh: data parallelism: a ``jax.sharding.Mesh`` with an axis named ``"data"``. The
        batch (every leaf's leading axis, which must divide evenly) is split over it and
        the parameters replicated; XLA adds the gradient all-reduce, so the step computes
        the same numbers as on one device.

    Example:
      >>> import jax, jax.numpy as jnp, optax, recurrax
      >>> loss = lambda p, batch: jnp.mean((batch["x"] * p - batch["y"]) ** 2)
      >>> opt = optax.sgd(0.1)
      >>> step = recurrax.train.make_train_step(loss, opt)
      >>> p, s = jnp.float32(0.0), opt.init(jnp.float32(0.0))
      >>> batch = {"x": jnp.ones(4), "y": 2 * jnp.ones(4)}
      >>> for _ in range(50):
      ...     p, s, value = step(p, s, batch)
      >>> round(float(p), 3)
      2.0
    """

    import optax  # imported here so that ``import recurrax`` does not need it

    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    if mesh is None:
        return jax.jit(step)
    if "data" not in mesh.axis_names:
        raise ValueError(f"the mesh needs an axis named 'data'; it has {mesh.axis_names}.")
    replicated = NamedSharding(mesh, PartitionSpec())
    split = NamedSharding(mesh, PartitionSpec("data"))
    jitted = jax.jit(
        step, in_shardings=(replicated, replicated, split), out_shardings=(replicated, replicated, replicated)
    )
    n = mesh.shape["data"]

    def sharded_step(params, opt_state, batch):
        for leaf in jax.tree.leaves(batch):
            if leaf.shape[0] % n:
                raise ValueError(f"the batch's leading axis ({leaf.shape[0]}) must divide over {n} devices.")
        return jitted(params, opt_state, batch)

    return sharded_step


# A checkpoint is an Orbax directory with two items: `state` (the arrays, saved by Orbax's
# StandardSave) and `recurrax` (JSON: this format's name, each leaf's dtype, shape and
# SHA-256, and for fit the run it belongs to). Orbax writes into a temporary directory and
# renames it when complete, so a crash never leaves a half-written checkpoint under the
# name; the hashes catch damage that Orbax reads back without complaint (a flipped bit in
# an array's data is restored silently).
_FORMAT = "recurrax.checkpoint.v1"
_TMP = ".orbax-checkpoint-tmp"  # Orbax's suffix for a checkpoint still being written
_INFO_FILE = os.path.join("recurrax", "metadata")  # where Orbax's JsonSave writes the recurrax item


def _spec(x) -> str:
    x = x if hasattr(x, "shape") and hasattr(x, "dtype") else np.asarray(x)
    return f"{np.dtype(x.dtype).name}{list(x.shape)}"


def _specs(tree) -> dict:
    return {jax.tree_util.keystr(k): _spec(v) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).reshape(-1).view(np.uint8)).hexdigest()


def _few(names: list) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _differences(stored: dict, want: dict, here: str) -> str:
    """What differs between a checkpoint's and ``here``'s ``{leaf path: dtype[shape]}`` tables, or ``""``."""
    parts = []
    if missing := [k for k in want if k not in stored]:
        parts.append(f"{here} has leaves the checkpoint lacks ({_few(missing)})")
    if extra := [k for k in stored if k not in want]:
        parts.append(f"the checkpoint has leaves {here} lacks ({_few(extra)})")
    changed = [k for k in want if k in stored and stored[k] != want[k]]
    parts += [f"leaf {k} is {stored[k]} in the checkpoint, {want[k]} in {here}" for k in changed[:3]]
    return "; ".join(parts)


def _write(save: Callable, tree: Any, run: dict | None = None) -> None:
    """Save ``tree`` (and ``run``, fit's description of the run) with ``save(args=...)``."""
    import orbax.checkpoint as ocp  # imported here: it adds half a second to `import recurrax`

    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    if not flat:
        raise ValueError("the tree has no array leaves; there is nothing to save.")
    arrays = [np.asarray(v) for _, v in flat]
    leaves = {jax.tree_util.keystr(k): [_spec(a), _sha256(a)] for (k, _), a in zip(flat, arrays)}
    if len(leaves) != len(arrays):
        raise ValueError("two leaves of this tree have the same path; cannot save it.")
    info = {"format": _FORMAT, "leaves": leaves, **({"run": run} if run is not None else {})}
    save(args=ocp.args.Composite(state=ocp.args.StandardSave(jax.tree.unflatten(treedef, arrays)),
                                 recurrax=ocp.args.JsonSave(info)))


def _find(path: str, *, fresh_ok: bool) -> str | None:
    """The checkpoint at ``path``: ``path`` itself, or the newest step of a :func:`fit` checkpoint.

    ``None`` when ``fresh_ok`` and ``path`` is missing or empty (or holds only a save
    that was interrupted), so :func:`fit` starts afresh there.
    """
    if not os.path.exists(path):
        if fresh_ok:
            return None
        raise FileNotFoundError(f"checkpoint {path} does not exist.")
    if not os.path.isdir(path):
        raise ValueError(f"checkpoint {path} is a file ({os.path.getsize(path)} bytes), not a checkpoint: a "
                         "checkpoint is a directory written by recurrax.train.save_checkpoint or recurrax.train.fit.")
    if os.path.isfile(os.path.join(path, _INFO_FILE)):
        return path
    names = sorted(n for n in os.listdir(path) if _TMP not in n)
    steps = [n for n in names if n.isdigit() and os.path.isdir(os.path.join(path, n))]
    if steps:
        return os.path.join(path, max(steps, key=int))
    if not names and fresh_ok:
        return None
    what = f"it holds {_few(names)}" if names else "it is empty"
    raise ValueError(
        f"{path} is not a recurrax checkpoint: {what}, and neither a recurrax/ item "
        "(recurrax.train.save_checkpoint writes one) nor numbered steps (recurrax.train.fit writes those)."
    )


def _read_info(path: str) -> dict:
    """The ``recurrax`` item of the checkpoint directory ``path``, checked."""
    import orbax.checkpoint as ocp

    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            info = ckptr.restore(path, args=ocp.args.Composite(recurrax=ocp.args.JsonRestore()))["recurrax"]
    except Exception as e:  # JSON, file-system or Orbax errors all mean the same to the caller
        raise ValueError(f"checkpoint {path} is damaged: its description recurrax/ cannot be read "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}).") from e
    if not isinstance(info, dict) or info.get("format") != _FORMAT or not isinstance(info.get("leaves"), dict):
        raise ValueError(f"checkpoint {path} is damaged or not a recurrax checkpoint: its recurrax/ item "
                         f"does not describe the format {_FORMAT}.")
    return info


def _restore(path: str, like: Any, info: dict) -> Any:
    """The ``state`` item of ``path`` in the structure of ``like``, checked against ``info``'s hashes."""
    import orbax.checkpoint as ocp

    flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    names = [jax.tree_util.keystr(k) for k, _ in flat]
    target = [np.empty(x.shape, x.dtype) for x in (x if hasattr(x, "dtype") else np.asarray(x) for _, x in flat)]
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            state = ckptr.restore(path, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(jax.tree.unflatten(treedef, target))))["state"]
        arrays = [np.asarray(a) for a in treedef.flatten_up_to(state)]
    except Exception as e:  # a missing, truncated or garbled array file: Orbax and TensorStore raise many types
        raise ValueError(f"checkpoint {path} is damaged: its arrays (state/) cannot be read "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}).") from e
    out = []
    for name, (_, ref), a in zip(names, flat, arrays):
        if [_spec(a), _sha256(a)] != info["leaves"][name]:
            raise ValueError(f"checkpoint {path} is damaged: leaf {name} does not hold the bytes that were "
                             "saved (its SHA-256 differs); delete the checkpoint.")
        out.append(jax.device_put(a, ref.sharding) if isinstance(ref, (jax.Array, jax.ShapeDtypeStruct)) else a)
    return jax.tree.unflatten(treedef, out)


def save_checkpoint(path: str | os.PathLike, tree: Any) -> str:
    """Save a pytree of arrays to a new checkpoint directory ``path``. Restore with :func:`load_checkpoint`.

    The checkpoint is an Orbax directory (``orbax.checkpoint``): ``path/state`` holds the
    arrays with their exact dtypes and bits, ``path/recurrax`` describes each leaf (tree
    path, dtype, shape, SHA-256), so that loading can name what does not match and detect
    damage. Orbax writes into a temporary directory and renames it when complete, so an
    interrupted save leaves nothing under ``path``.

    Args:
      path: a directory that does not exist yet (its parents are created).
      tree: a pytree whose leaves are arrays or scalars (JAX, NumPy or Python).

    Returns:
      ``path``, as a string.

    Raises:
      ValueError: ``path`` exists (a checkpoint is never overwritten: save each version to
        its own path, e.g. ``run/step_100``, or use :func:`fit`'s ``checkpoint=``), or the
        tree has no leaves.

    Example:
      >>> import os, tempfile, jax.numpy as jnp, numpy as np, recurrax
      >>> tree = {"w": jnp.arange(3.0), "step": np.int64(7)}
      >>> with tempfile.TemporaryDirectory() as d:
      ...     path = recurrax.train.save_checkpoint(os.path.join(d, "ckpt"), tree)
      ...     back = recurrax.train.load_checkpoint(path, tree)
      >>> back["w"].tolist(), int(back["step"])
      ([0.0, 1.0, 2.0], 7)
    """
    import orbax.checkpoint as ocp

    path = os.fspath(path)
    if os.path.lexists(path):
        raise ValueError(f"save_checkpoint: {path} already exists and is never overwritten; delete it, or save "
                         "each version to its own path (e.g. run/step_100).")
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        _write(lambda args: ckptr.save(os.path.abspath(path), args=args), tree)
    return path


def load_checkpoint(path: str | os.PathLike, like: Any) -> Any:
    """Load a checkpoint written by :func:`save_checkpoint` (or by :func:`fit`) into the structure of ``like``.

    Leaves come back with exactly the stored dtypes and bits: as JAX arrays (placed with the
    template leaf's sharding) where ``like`` holds JAX arrays or ``jax.ShapeDtypeStruct``,
    as NumPy arrays elsewhere (so a NumPy int64 step counter stays int64 even when JAX
    runs without x64). For a :func:`fit` checkpoint (a directory of numbered steps) the
    newest step is loaded, and ``like`` is ``{"params": params, "opt_state": opt_state}``.

    Args:
      path: the checkpoint directory.
      like: a pytree with the structure, shapes and dtypes of the saved one (e.g.
        ``jax.eval_shape(model.init, key)``).

    Returns:
      The saved pytree, in the structure of ``like``.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: ``path`` is not a checkpoint (a file, an empty or foreign directory), is
        damaged (a file missing, truncated or altered), or its leaves do not match ``like``
        (paths, shapes or dtypes); the message names the path and what is wrong.

    Example:
      >>> import os, tempfile, jax, jax.numpy as jnp, recurrax
      >>> params = {"W": jnp.ones((2, 3)), "b": jnp.zeros(3)}
      >>> like = jax.eval_shape(lambda: params)  # shapes and dtypes suffice
      >>> with tempfile.TemporaryDirectory() as d:
      ...     path = recurrax.train.save_checkpoint(os.path.join(d, "model"), params)
      ...     back = recurrax.train.load_checkpoint(path, like)
      >>> back["W"].shape, bool(jnp.array_equal(back["W"], params["W"]))
      ((2, 3), True)
    """
    path = os.fspath(path)
    found = _find(path, fresh_ok=False)
    info = _read_info(found)
    diff = _differences({k: v[0] for k, v in info["leaves"].items()}, _specs(like), "the template")
    if diff:
        raise ValueError(f"checkpoint {found} does not match the template: {diff}.")
    return _restore(found, like, info)


class FitResult(NamedTuple):
    """What :func:`fit` returns: final ``params`` and ``opt_state``, and the ``history`` of logs."""

    params: Any
    opt_state: Any
    history: list


def _fingerprint(tree) -> dict:
    """Per leaf: the sum and the sum of magnitudes of its finite values, to recognise a starting point."""
    out = {}
    for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]:
        a = np.asarray(v, np.float64)
        a = np.where(np.isfinite(a), a, 0.0)  # an optimizer state may start at inf (a best loss so far)
        out[jax.tree_util.keystr(k)] = [float(np.sum(a)), float(np.sum(np.abs(a)))]
    return out


def _same_start(stored: dict, now: dict) -> list:
    """The leaves whose starting values differ (beyond rounding that another machine could cause)."""
    def close(a, b):
        return abs(a[0] - b[0]) <= 1e-5 * max(a[1], b[1]) and abs(a[1] - b[1]) <= 1e-5 * max(a[1], b[1])

    return [k for k in now if not close(stored[k], now[k])]


def _index(name: str, value: Any, low: int | None = None) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer; got {value!r}.") from None
    if low is not None and value < low:
        raise ValueError(f"{name} must be at least {low}; got {value}.")
    return value


_RUN_KEYS = {"steps", "seed", "start", "step", "batch", "history", "seconds"}


def _resume(checkpoint: str, found: str, state: dict, run: dict, batch_of: Callable) -> tuple[dict, dict]:
    """The state saved in ``found`` and its run's description, once they are known to be this run's."""
    info = _read_info(found)
    stored = info.get("run")
    if stored is None:
        raise ValueError(f"checkpoint {found} was written by save_checkpoint, not by fit; give fit a directory "
                         "of its own.")
    if not isinstance(stored, dict) or not _RUN_KEYS <= set(stored):
        raise ValueError(f"checkpoint {found} is damaged: its recurrax/ item does not describe the run.")
    differ = [f"{k}={stored[k]} there, {k}={run[k]} here" for k in ("steps", "seed") if stored[k] != run[k]]
    if diff := _differences({k: v[0] for k, v in info["leaves"].items()}, _specs(state), "this run"):
        differ.append(f"its params/opt_state differ (another model or optimizer): {diff}")
    elif changed := _same_start(stored["start"], run["start"]):
        differ.append(f"it started from other values of {_few(changed)} (another initialisation)")
    if diff := _differences(stored["batch"], _specs(batch_of(stored["step"] - 1)), "this run's batch"):
        differ.append(f"its batches differ: {diff}")
    if differ:
        raise ValueError(f"checkpoint {checkpoint} was written by another run: {'; '.join(differ)}. Delete it to "
                         "start this run afresh, or pass another checkpoint= path.")
    return _restore(found, state, info), stored


def fit(
    step: TrainStep,
    params: Any,
    opt_state: Any,
    batch_fn: Callable[[jax.Array], Any],
    *,
    steps: int,
    seed: int = 0,
    eval_fn: Callable[[Any], dict] | None = None,
    eval_every: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    progress: bool | None = None,
    desc: str = "train",
) -> FitResult:
    """Run ``steps`` training steps, deterministically given ``seed``; resume from ``checkpoint``.

    The batch of step ``i`` is ``batch_fn(jax.random.fold_in(jax.random.key(seed), i))``,
    so a run is reproducible, and a run resumed from a checkpoint sees the same batches
    as an uninterrupted one and ends with the same parameters, optimizer state and history.

    ``checkpoint`` is a directory of Orbax checkpoints, one per saved step (``run/120/``;
    only the newest is kept, and it is complete before the previous one is deleted). Each
    holds the params, the optimizer state, the history so far and what the run is: its
    ``steps``, ``seed``, the starting params and optimizer state (their tree paths, shapes,
    dtypes, and per-leaf sums to within rounding) and the shapes of its batches. A run
    resumes only from a checkpoint of the same run: anything else raises a ValueError that
    names the checkpoint and what differs. What fit cannot see (the loss, the optimizer's
    hyperparameters, ``eval_fn``, ``eval_every``) is yours to keep the same.

    Args:
      step: from :func:`make_train_step`.
      params, opt_state: the starting point.
      batch_fn: ``batch_fn(key) -> batch``.
      steps: the total number of steps.
      seed: the data seed.
      eval_fn: ``eval_fn(params) -> {name: value}``, run every ``eval_every`` steps and at the end.
      eval_every: see ``eval_fn``; ``None`` evaluates only at the end.
      checkpoint: a directory (new, empty, or written by an earlier call of this run). When
        it holds a checkpoint of this run, the run resumes from it; when that checkpoint is
        the finished run's, fit returns its result without training or writing anything.
        A checkpoint is written every ``checkpoint_every`` steps and at the end.
      checkpoint_every: see ``checkpoint``.
      progress: show a progress bar (tqdm) with the running loss; it says when the first
        step is being compiled. ``None`` (default): only when stderr is a terminal, so a
        log file or CI output gets no stream of redrawn bars.
      desc: the progress bar's label.

    Returns:
      A :class:`FitResult`; ``history`` holds ``{"step", "loss", "seconds", ...eval}`` rows
      for the whole run, those before a resume included (they are kept in the checkpoint);
      ``"seconds"`` is the training time since the run's start, summed over its sessions.

    Raises:
      ValueError: ``checkpoint`` is not a checkpoint directory, is damaged, or belongs to
        another run (the message says what differs: delete it to start afresh, or pass
        another path); ``steps`` is negative or ``checkpoint_every`` below 1.
      TypeError: ``steps``, ``seed`` or ``checkpoint_every`` is not an integer.

    Example:
      >>> import os, tempfile, jax, jax.numpy as jnp, optax, recurrax
      >>> loss = lambda p, batch: jnp.mean((batch * p - 2 * batch) ** 2)
      >>> opt = optax.sgd(0.1)
      >>> step = recurrax.train.make_train_step(loss, opt)
      >>> batches = lambda key: jax.random.normal(key, (8,))
      >>> p0 = jnp.float32(0.0)
      >>> with tempfile.TemporaryDirectory() as d:
      ...     run = os.path.join(d, "run")
      ...     first = recurrax.train.fit(step, p0, opt.init(p0), batches, steps=60, checkpoint=run, progress=False)
      ...     again = recurrax.train.fit(step, p0, opt.init(p0), batches, steps=60, checkpoint=run, progress=False)
      >>> round(float(first.params), 3), float(again.params) == float(first.params), again.history == first.history
      (2.0, True, True)
    """
    from tqdm.auto import tqdm

    steps, seed = _index("steps", steps, 0), _index("seed", seed)
    if checkpoint_every is not None:
        checkpoint_every = _index("checkpoint_every", checkpoint_every, 1)
    key = jax.random.key(seed)
    batch_of = lambda i: batch_fn(jax.random.fold_in(key, i))  # noqa: E731
    start, history, seconds, found = 0, [], 0.0, None
    if checkpoint is not None:
        checkpoint = os.fspath(checkpoint)
        run = {"steps": steps, "seed": seed, "start": _fingerprint({"params": params, "opt_state": opt_state})}
        found = _find(checkpoint, fresh_ok=True)
    if found is not None:
        state, stored = _resume(checkpoint, found, {"params": params, "opt_state": opt_state}, run, batch_of)
        params, opt_state, start = state["params"], state["opt_state"], stored["step"]
        history, seconds = list(stored["history"]), stored["seconds"]
    t0, loss, batch = time.perf_counter() - seconds, None, None
    if progress is None:
        progress = sys.stderr.isatty()
    bar = tqdm(range(start, steps), desc=desc, disable=not progress, initial=start, total=steps,
               leave=False, mininterval=1.0)

    def log(i, loss):
        row = {"step": i, "loss": float(loss), "seconds": time.perf_counter() - t0}
        if eval_fn is not None:
            row.update({k: float(v) for k, v in eval_fn(params).items()})
        history.append(row)
        bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k not in ("step", "seconds")})

    def save(i):
        _write(lambda args: manager.save(i, args=args), {"params": params, "opt_state": opt_state},
               {**run, "step": i, "batch": _specs(batch), "history": list(history),
                "seconds": time.perf_counter() - t0})

    with _manager(checkpoint) if checkpoint is not None and start < steps else contextlib.nullcontext() as manager:
        for i in bar:
            batch = batch_of(i)
            if i == start:  # the first call traces and compiles, which can take a while
                bar.set_postfix_str("compiling the training step", refresh=True)
            params, opt_state, loss = step(params, opt_state, batch)
            if i == start:
                bar.set_postfix_str("", refresh=True)
            if eval_every and (i + 1) % eval_every == 0 and i + 1 < steps:
                log(i + 1, loss)
            elif (i + 1) % 50 == 0:
                bar.set_postfix(loss=f"{float(loss):.4g}")
            if manager and checkpoint_every and (i + 1) % checkpoint_every == 0 and i + 1 < steps:
                save(i + 1)
        bar.close()
        if start < steps:
            log(steps, loss)
            if manager:
                save(steps)
    return FitResult(params, opt_state, history)


def _manager(path: str):
    """Orbax's manager of ``path``'s numbered steps: keeps the newest, cleans interrupted saves."""
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=1, cleanup_tmp_directories=True)
    return ocp.CheckpointManager(os.path.abspath(path), item_names=("state", "recurrax"), options=options)
