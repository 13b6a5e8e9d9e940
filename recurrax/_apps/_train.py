"""Training with Optax: a jitted (optionally data-parallel) step, a fit loop, checkpoints.

Training follows the lecture's loop (initialise; iterate over data: compute y_hat,
compute L, update every weight ``w <- w - eta dL/dw``; until satisfied), with the update
left to any ``optax.GradientTransformation`` (``optax.sgd`` is the lecture's rule;
``optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))`` tames exploding
gradients).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

if TYPE_CHECKING:  # optax is imported lazily, so that `import recurrax` does not need it
    import optax

TrainStep = Callable[[Any, Any, Any], tuple[Any, Any, jax.Array]]


def make_train_step(
    loss_fn: Callable[[Any, Any], jax.Array],
    optimizer: "optax.GradientTransformation",
    *,
    mesh: Optional[Mesh] = None,
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
      >>> step = recurrax.make_train_step(loss, opt)
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
    jitted = jax.jit(step, in_shardings=(replicated, replicated, split), out_shardings=(replicated, replicated, replicated))
    n = mesh.shape["data"]

    def sharded_step(params, opt_state, batch):
        for leaf in jax.tree.leaves(batch):
            if leaf.shape[0] % n:
                raise ValueError(f"the batch's leading axis ({leaf.shape[0]}) must divide over {n} devices.")
        return jitted(params, opt_state, batch)

    return sharded_step


def save_checkpoint(path: str | os.PathLike, tree: Any) -> str:
    """Save a pytree of arrays to ``path`` (``.npz``), atomically. Restore with :func:`load_checkpoint`.

    Every leaf is stored under its tree path with its exact dtype and bits.
    """
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    arrays, dtypes = {}, {}
    for k, v in leaves:
        a, name = np.asarray(v), jax.tree_util.keystr(k)
        dtypes[name] = a.dtype.name
        # .npz cannot hold ml_dtypes (bfloat16, float8...): store their bits, exactly.
        arrays[name] = a.view(f"u{a.dtype.itemsize}") if a.dtype.kind == "V" else a
    if len(arrays) != len(leaves):
        raise ValueError("two leaves of this tree have the same path; cannot save it.")
    arrays["__dtypes__"] = np.array(json.dumps(dtypes))
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".npz")
    with os.fdopen(fd, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike, like: Any) -> Any:
    """Load a checkpoint saved by :func:`save_checkpoint` into the structure of ``like``.

    Leaves come back with exactly the stored dtypes and bits, as JAX arrays where the
    template holds JAX arrays and as NumPy arrays elsewhere (so a NumPy int64 step counter
    stays int64 even when JAX runs without x64).

    Raises:
      ValueError: when the file's leaves do not match ``like`` (paths, shapes or dtypes).
    """
    with np.load(os.fspath(path)) as data:
        stored = dict(data)
    dtypes = json.loads(str(stored.pop("__dtypes__")))
    stored = {k: a.view(jnp.dtype(dtypes[k])) for k, a in stored.items()}
    leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    want = {jax.tree_util.keystr(k): v for k, v in leaves}
    if set(want) != set(stored):
        raise ValueError(f"{path} does not match the template: missing {sorted(set(want) - set(stored))}, "
                         f"unexpected {sorted(set(stored) - set(want))}.")
    out = []
    for k, ref in want.items():
        a = stored[k]
        if a.shape != np.shape(ref) or a.dtype != np.asarray(ref).dtype:
            raise ValueError(f"{path}: leaf {k} is {a.dtype}{list(a.shape)}, the template has "
                             f"{np.asarray(ref).dtype}{list(np.shape(ref))}.")
        out.append(jnp.asarray(a) if isinstance(ref, jax.Array) else a)
    return jax.tree.unflatten(treedef, out)


class FitResult(NamedTuple):
    """What :func:`fit` returns: final ``params`` and ``opt_state``, and the ``history`` of logs."""

    params: Any
    opt_state: Any
    history: list


def fit(
    step: TrainStep,
    params: Any,
    opt_state: Any,
    batch_fn: Callable[[jax.Array], Any],
    *,
    steps: int,
    seed: int = 0,
    eval_fn: Optional[Callable[[Any], dict]] = None,
    eval_every: Optional[int] = None,
    checkpoint: Optional[str] = None,
    checkpoint_every: Optional[int] = None,
    progress: bool = True,
    desc: str = "train",
) -> FitResult:
    """Run ``steps`` training steps, deterministically given ``seed``.

    The batch of step ``i`` is ``batch_fn(jax.random.fold_in(jax.random.key(seed), i))``,
    so a run is reproducible, and a run resumed from a checkpoint sees the same batches
    as an uninterrupted one (and ends with the same parameters).

    Args:
      step: from :func:`make_train_step`.
      params, opt_state: the starting point.
      batch_fn: ``batch_fn(key) -> batch``.
      steps: the total number of steps.
      seed: the data seed.
      eval_fn: ``eval_fn(params) -> {name: value}``, run every ``eval_every`` steps and at the end.
      eval_every: see ``eval_fn``; ``None`` evaluates only at the end.
      checkpoint: a path; when it exists the run resumes from it, and it is rewritten
        every ``checkpoint_every`` steps and at the end.
      checkpoint_every: see ``checkpoint``.
      progress: show a progress bar (tqdm) with the running loss.
      desc: the progress bar's label.

    Returns:
      A :class:`FitResult`; ``history`` holds ``{"step", "loss", "seconds", ...eval}`` rows.
    """
    from tqdm.auto import tqdm

    start = 0
    state = {"params": params, "opt_state": opt_state, "step": np.int64(0)}
    if checkpoint and os.path.exists(checkpoint):
        state = load_checkpoint(checkpoint, state)
        params, opt_state, start = state["params"], state["opt_state"], int(state["step"])
    key = jax.random.key(seed)
    history, t0, loss = [], time.perf_counter(), None
    bar = tqdm(range(start, steps), desc=desc, disable=not progress, initial=start, total=steps,
               leave=False, mininterval=1.0)

    def log(i, loss):
        row = {"step": i, "loss": float(loss), "seconds": time.perf_counter() - t0}
        if eval_fn is not None:
            row.update({k: float(v) for k, v in eval_fn(params).items()})
        history.append(row)
        bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k not in ("step", "seconds")})

    def save(i):
        save_checkpoint(checkpoint, {"params": params, "opt_state": opt_state, "step": np.int64(i)})

    for i in bar:
        params, opt_state, loss = step(params, opt_state, batch_fn(jax.random.fold_in(key, i)))
        if eval_every and (i + 1) % eval_every == 0 and i + 1 < steps:
            log(i + 1, loss)
        elif (i + 1) % 50 == 0:
            bar.set_postfix(loss=f"{float(loss):.4g}")
        if checkpoint and checkpoint_every and (i + 1) % checkpoint_every == 0:
            save(i + 1)
    bar.close()
    if loss is not None:
        log(steps, loss)
    if checkpoint:
        save(steps)
    return FitResult(params, opt_state, history)
