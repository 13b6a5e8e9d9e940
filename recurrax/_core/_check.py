"""Checking a cell's claims: each capability it declares against its own ``apply``.

A capability (docs/cells.md) is a promise the library trusts: ``scan`` picks a projection
placement by batch size, ``manual_bptt`` runs the hand backward, ``parallel_scan`` the
Jacobian diagonal or the linear coefficients. :func:`check_cell` tests each promise the
cell makes (by ``isinstance`` of the capability protocols) step by step along the cell's
own trajectory, in float64, and says which quantity disagrees, where, and by how much.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from recurrax._core import _noise
from recurrax._core._base import (
    Array,
    HandBackward,
    JacobianDiagonal,
    LinearRecurrence,
    Params,
    SplitForm,
    Stochastic,
)
from recurrax._core._bptt import manual_bptt
from recurrax._core._scan import scan
from recurrax._core._validate import check_cell as check_cell_object
from recurrax._core._validate import check_xs, coarsest_float, split_form


@dataclasses.dataclass(frozen=True)
class CheckRow:
    """One claim of a cell (or one pair of a parity matrix) and what was found.

    Attributes:
      name: the capability (``"split form"``, ``"hand backward"``, ``"jacobian diagonal"``,
        ``"linear coefficients"``, ``"noise"``, ``"dtype"``) or the pair compared.
      status: ``"pass"``, ``"FAIL"`` or ``"skipped"``.
      max_abs_err: the largest absolute difference over all comparisons of the row.
      tol: the tolerance: ``|a - b| <= tol * (1 + |b|)`` entrywise.
      detail: what disagrees, where and by how much; what was compared when all agree;
        why the row was skipped.
    """

    name: str
    status: str
    max_abs_err: float
    tol: float
    detail: str


@dataclasses.dataclass(frozen=True)
class CheckReport:
    """What :func:`check_cell` (or :func:`parity`) found; its repr is a readable table.

    Attributes:
      rows: one :class:`CheckRow` per capability (or pair); ``report["hand backward"]``
        looks one up by name.
      title: what was checked.
      ok: no row failed (skipped rows do not count).
    """

    rows: tuple
    title: str

    @property
    def ok(self) -> bool:
        return all(r.status != "FAIL" for r in self.rows)

    def __getitem__(self, name: str) -> CheckRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no row {name!r}; rows: {[r.name for r in self.rows]}")

    def __repr__(self) -> str:
        header = ("check", "result", "max abs err", "tol", "detail")
        body = [(r.name, r.status, f"{r.max_abs_err:.2e}", f"{r.tol:.0e}", r.detail) for r in self.rows]
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header) - 1)]
        line = lambda row: "  ".join([*(c.ljust(w) for c, w in zip(row, widths)), row[-1]]).rstrip()  # noqa: E731
        bad = sum(r.status == "FAIL" for r in self.rows)
        verdict = "ok" if self.ok else f"{bad} FAILED"
        return "\n".join([self.title, line(header), line(["-" * w for w in widths] + ["------"]), *map(line, body),
                          verdict])

    __str__ = __repr__


@dataclasses.dataclass(frozen=True)
class _Finding:
    what: str
    err: float
    bad: bool
    where: str


def compare(what: str, a: Any, b: Any, tol: float, per_step: bool = True) -> _Finding:
    """``a`` against the reference ``b`` (pytrees of the same structure); with ``per_step``
    the leading axis is time and the first step that disagrees is named."""
    leaves_a = jax.tree_util.tree_flatten_with_path(a)[0]
    leaves_b = jax.tree.leaves(b)
    if len(leaves_a) != len(leaves_b):
        return _Finding(what, float("inf"), True, f"structure {jax.tree.structure(a)} vs {jax.tree.structure(b)}")
    err, first = 0.0, None
    for (path, x), y in zip(leaves_a, leaves_b):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x.shape != y.shape:
            return _Finding(what, float("inf"), True, f"shape {x.shape} vs {y.shape}")
        diff = np.abs(x - y)
        diff = np.where(np.isnan(x) != np.isnan(y), np.inf, np.nan_to_num(diff))
        err = max(err, float(diff.max(initial=0.0)))
        bad = diff > tol * (1 + np.abs(np.nan_to_num(y)))
        if bad.any():
            name = jax.tree_util.keystr(path, simple=True, separator=".")
            t = int(np.argwhere(bad)[0][0]) if per_step and bad.ndim else None
            if first is None or (t is not None and first[0] is not None and t < first[0]):
                first = (t, name)
    if first is None:
        return _Finding(what, err, False, "")
    t, name = first
    where = ", ".join(s for s in (f"first at step t={t}" if t is not None else "", f"leaf {name}" if name else "")
                      if s)
    return _Finding(what, err, True, where)


def row_from(name: str, findings: list, tol: float) -> CheckRow:
    err = max((f.err for f in findings), default=0.0)
    bad = [f for f in findings if f.bad]
    if not bad:
        return CheckRow(name, "pass", err, tol, "agree: " + "; ".join(f.what for f in findings))
    detail = "; ".join(f"{f.what} differ by {f.err:.2e}" + (f" ({f.where})" if f.where else "") for f in bad)
    return CheckRow(name, "FAIL", err, tol, detail)


def _guarded(name: str, tol: float, fn: Callable[[], list]) -> CheckRow:
    """The row of ``fn()``'s findings; a FAIL row naming the error if the cell's code raises."""
    try:
        return row_from(name, fn(), tol)
    except Exception as e:  # noqa: BLE001 - any error of the cell's own code is the finding
        return CheckRow(name, "FAIL", float("inf"), tol, f"raised {type(e).__name__}: {_short(e)}")


def _short(e: Exception, n: int = 300) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _tolerance(cell, params, carry, xs) -> float:
    """1e-9 when ``apply`` computes in float64 throughout; a few roundings of the coarsest
    dtype it computes in otherwise (a cell with ``dtype=jnp.bfloat16`` rounds inside)."""
    coarse = coarsest_float(lambda p, c, x: cell.apply(p, c, x[0]), params, carry, xs)
    if coarse is None or jnp.finfo(coarse).eps <= jnp.finfo(jnp.float64).eps:
        return 1e-9
    return 8 * float(jnp.finfo(coarse).eps)


def _trajectory(cell, params, carry, xs):
    """The carries before each step of ``apply`` over ``xs`` (leading axis time)."""

    def body(c, x):
        return cell.apply(params, c, x)[0], c

    return jax.lax.scan(body, carry, xs)[1]


def _random_like(rng, tree):
    return jax.tree.map(lambda a: rng.normal(size=a.shape).astype(a.dtype), tree)


def _check_split(cell, params, xs, carry, carries, tol):
    project, step = split_form(cell)

    @jax.jit
    def run(params, xs, carry, carries):
        split = jax.vmap(lambda c, x: step(params, c, project(params, x)))(carries, xs)
        fused = jax.vmap(lambda c, x: cell.apply(params, c, x))(carries, xs)
        placed = {p: scan(cell, params, xs, carry, projection=p) for p in ("before", "in_loop")}
        return split, fused, placed

    split, fused, placed = run(params, xs, carry, carries)
    return [compare("step(project(x)) vs apply (carry, y)", split, fused, tol),
            compare('scan projection="before" vs "in_loop" (final carry)', placed["before"][0],
                    placed["in_loop"][0], tol, per_step=False),
            compare('scan projection="before" vs "in_loop" (ys)', placed["before"][1], placed["in_loop"][1], tol)]


def _check_backward(cell, params, xs, carries, tol, rng):
    project, step = split_form(cell)

    @jax.jit
    def run(params, xs, carries, carry_bar, y_bar):
        xps = jax.vmap(lambda x: project(params, x))(xs)
        outs, res = jax.vmap(lambda c, xp: cell.step_fwd(params, c, xp))(carries, xps)
        ref = jax.vmap(lambda c, xp: step(params, c, xp))(carries, xps)
        prev, d = jax.vmap(lambda r, cb, yb: cell.step_bwd(params, r, cb, yb))(res, carry_bar, y_bar)
        p_bar, xp_bar = cell.step_bwd_params(params, res, d)

        def vjp(c, xp, cb, yb):
            return jax.vjp(lambda p, c, xp: step(p, c, xp), params, c, xp)[1]((cb, yb))

        ref_p, ref_prev, ref_xp = jax.vmap(vjp)(carries, xps, carry_bar, y_bar)
        return (outs, ref), (prev, ref_prev), (p_bar, jax.tree.map(lambda a: a.sum(0), ref_p)), (xp_bar, ref_xp)

    shapes = jax.eval_shape(lambda c, xp: step(params, c, xp), carries, jax.vmap(lambda x: project(params, x))(xs))
    carry_bar, y_bar = _random_like(rng, shapes)
    fwd, prev, p_bar, xp_bar = run(params, xs, carries, carry_bar, y_bar)
    return [compare("step_fwd vs step (carry, y)", *fwd, tol),
            compare("step_bwd's carry cotangent dL/ds_{t-1} vs jax.vjp of a step", *prev, tol),
            compare("step_bwd_params' params_bar vs jax.vjp of the steps, summed", *p_bar, tol, per_step=False),
            compare("step_bwd_params' xp_bar vs jax.vjp of a step", *xp_bar, tol)]


def _check_diagonal(cell, params, xs, carries, tol):
    project, step = split_form(cell)

    def diagonal(c, xp):
        flat, unravel = ravel_pytree(c)
        J = jax.jacfwd(lambda f: ravel_pytree(step(params, unravel(f), xp)[0])[0])(flat)
        return unravel(jnp.diagonal(J))

    def each(fn):  # over time and every batch dimension: parallel_scan asks one example at a time
        for _ in range(xs.ndim - 1):
            fn = jax.vmap(fn)
        return fn

    @jax.jit
    def run(params, xs, carries):
        xps = each(lambda x: project(params, x))(xs)
        outs, diag = each(lambda c, xp: cell.step_jacobian_diagonal(params, c, xp))(carries, xps)
        return (outs, each(lambda c, xp: step(params, c, xp))(carries, xps)), (diag, each(diagonal)(carries, xps))

    outs, diag = run(params, xs, carries)
    return [compare("step_jacobian_diagonal's (carry, y) vs step", *outs, tol),
            compare("step_jacobian_diagonal's diag vs diagonal of jax.jacfwd of a step", *diag, tol)]


def _check_linear(cell, params, xs, carries, tol, rng):
    project, step = split_form(cell)

    @jax.jit
    def run(params, xs, carries, others):
        xps = jax.vmap(lambda x: project(params, x))(xs)
        a, b = jax.vmap(lambda xp: cell.linear_coefficients(params, xp))(xps)
        affine = lambda c: jax.tree.map(lambda a, b, c: a * c + b, a, b, c)  # noqa: E731
        # against apply: a step written through the coefficients would agree with them anyway
        new = lambda cs: jax.vmap(lambda c, x: cell.apply(params, c, x)[0])(cs, xs)  # noqa: E731
        return (affine(carries), new(carries)), (affine(others), new(others))

    along, other = run(params, xs, carries, _random_like(rng, jax.tree.map(np.asarray, carries)))
    return [compare("a * carry + b vs apply's carry", *along, tol),
            compare("a * carry + b vs apply's carry, at random carries", *other, tol)]


def _check_noise(cell, params, xs, carry, tol, rng):
    """With noise drawn from a fixed key: ``sample_noise`` is a function of the key, and the
    cells ``with_noise`` gives keep the split form and hand backward the cell claims."""
    key = jax.random.key(0)
    loss_of = _default_parity_loss(rng, *jax.eval_shape(lambda: scan(cell, params, xs, carry)))

    @jax.jit
    def run(params, xs, carry):
        out = {"draws": (_noise.draw(cell, params, xs, key), _noise.draw(cell, params, xs, key))}
        if isinstance(cell, SplitForm):
            out["placed"] = [scan(cell, params, xs, carry, projection=p, key=key) for p in ("before", "in_loop")]
        if isinstance(cell, HandBackward):
            def loss(backward, p, x, c):
                return loss_of(*scan(cell, p, x, c, backward=backward, key=key))

            out["grads"] = [jax.grad(functools.partial(loss, b), argnums=(0, 1, 2))(params, xs, carry)
                            for b in ("manual", "autodiff")]
        return out

    out = run(params, xs, carry)
    findings = [compare("sample_noise twice with one key", *out["draws"], tol, per_step=False)]
    if "placed" in out:
        (final_b, ys_b), (final_l, ys_l) = out["placed"]
        findings += [compare('scan with key, projection="before" vs "in_loop" (ys)', ys_b, ys_l, tol),
                     compare('scan with key, projection="before" vs "in_loop" (final carry)', final_b, final_l, tol,
                             per_step=False)]
    if "grads" in out:
        (p_m, x_m, c_m), (p_a, x_a, c_a) = out["grads"]
        findings += [compare('scan with key, backward="manual" vs autodiff: dL/dxs', x_m, x_a, tol),
                     compare('scan with key, backward="manual" vs autodiff: dL/dparams, dL/dcarry',
                             {"params": p_m, "carry": c_m}, {"params": p_a, "carry": c_a}, tol, per_step=False)]
    return findings


_HALF_TOL = 0.05  # relative to the largest gradient entry: bfloat16 keeps 8 bits


def _check_dtype(cell, params, xs, carry):
    """bfloat16 inputs with float32 params: every gradient path autodiff runs must run too,
    give the dtypes ``jax.vjp`` gives, and agree with autodiff to bfloat16's precision.

    Mixed precision presupposes JAX's standard dtype promotion, which this check uses
    whatever ``jax_numpy_dtype_promotion`` says."""
    with jax.numpy_dtype_promotion("standard"):
        return _run_dtype(cell, params, xs, carry)


def _run_dtype(cell, params, xs, carry):
    to = lambda t, d: jax.tree.map(  # noqa: E731
        lambda a: np.asarray(a, d) if jnp.issubdtype(np.asarray(a).dtype, jnp.floating) else a, t)
    params32 = to(params, np.float32)
    xs16 = jnp.asarray(np.asarray(xs, np.float32), jnp.bfloat16)
    carry16 = None if carry is None else jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float32), jnp.bfloat16),
                                                      carry)

    def loss(final, ys):
        return jnp.sum(jnp.tanh(ys.astype(jnp.float32))) + sum(jnp.sum(c.astype(jnp.float32))
                                                                 for c in jax.tree.leaves(final))

    def via_scan(backward):
        return jax.jit(jax.grad(lambda p, x: loss(*scan(cell, p, x, carry16, backward=backward)), argnums=(0, 1)))

    def via_manual_bptt(p, x):
        final, ys = scan(cell, p, x, carry16)
        carry_bar, ys_bar = jax.grad(loss, argnums=(0, 1))(final, ys)
        p_bar, x_bar, _ = manual_bptt(cell, p, x, ys_bar, carry=carry16, carry_bar=carry_bar)
        return p_bar, x_bar

    try:
        reference = via_scan("autodiff")(params32, xs16)
    except Exception as e:  # noqa: BLE001
        return CheckRow("dtype", "skipped", 0.0, _HALF_TOL,
                        f"autodiff itself does not run bfloat16 xs with float32 params: {_short(e, 120)}")
    paths = {'scan(backward="manual")': via_scan("manual"), "manual_bptt": jax.jit(via_manual_bptt)}
    if not isinstance(cell, HandBackward):
        return CheckRow("dtype", "pass", 0.0, _HALF_TOL, "bfloat16 xs with float32 params run on scan autodiff "
                                                          "(no hand backward claimed)")
    scale = max(float(np.abs(np.asarray(a, np.float32)).max(initial=0.0)) for a in jax.tree.leaves(reference))
    findings, problems = [], []
    for name, fn in paths.items():
        try:
            grads = fn(params32, xs16)
        except Exception as e:  # noqa: BLE001
            problems.append(f"{name} raised {type(e).__name__}: {_short(e, 200)}")
            continue
        dtypes = jax.tree.map(lambda a: jnp.dtype(a.dtype).name, grads)
        want = jax.tree.map(lambda a: jnp.dtype(a.dtype).name, reference)
        if dtypes != want:
            problems.append(f"{name} gives gradients of dtypes {dtypes}, jax.vjp {want}")
            continue
        scaled = lambda t: jax.tree.map(lambda a: np.asarray(a, np.float32) / max(scale, 1e-30), t)  # noqa: E731
        findings.append(compare(f"{name} vs autodiff", scaled(grads), scaled(reference), _HALF_TOL, per_step=False))
    row = row_from("dtype", findings, _HALF_TOL)
    if problems:
        return CheckRow("dtype", "FAIL", float("inf") if not findings else row.max_abs_err, _HALF_TOL,
                        "; ".join(problems + ([row.detail] if row.status == "FAIL" else [])))
    return dataclasses.replace(row, detail=f"bfloat16 xs, float32 params, relative to the largest gradient: "
                                           f"{row.detail}")


def check_cell(cell: Any, params: Params, xs: Array, *, carry: Any = None) -> CheckReport:
    """Check every capability ``cell`` claims against its own ``apply``, step by step.

    Runs ``apply`` over ``xs`` from ``carry`` in float64 and, at each step's carry,
    compares (rows named as here; a capability the cell does not claim has no row):

    - ``"split form"`` (:class:`recurrax.SplitForm`): ``step(project(x))`` against
      ``apply``, and ``scan`` with ``projection="before"`` against ``"in_loop"`` (which
      one runs by default depends on the batch size);
    - ``"hand backward"`` (:class:`recurrax.HandBackward`): ``step_fwd`` against ``step``,
      ``step_bwd``'s carry cotangent and ``step_bwd_params``' ``params_bar`` and
      ``xp_bar`` against ``jax.vjp`` of one step, for random cotangents;
    - ``"jacobian diagonal"`` (:class:`recurrax.JacobianDiagonal`): the diagonal against
      ``jnp.diagonal`` of ``jax.jacfwd`` of one step (with respect to the flattened carry),
      one example at a time as :func:`recurrax.parallel_scan` asks for it;
    - ``"linear coefficients"`` (:class:`recurrax.LinearRecurrence`): ``a * carry + b``
      against ``apply``'s new carry, along the trajectory and at random carries;
    - ``"noise"`` (:class:`recurrax.Stochastic`): with the noise of a fixed key,
      ``sample_noise`` drawn twice agrees (it is a function of the key), and the noisy
      cells ``with_noise`` gives keep the claims: ``scan`` with ``projection="before"``
      against ``"in_loop"`` (split form), ``backward="manual"``'s gradients against
      autodiff's (hand backward; the first step whose ``dL/dx_t`` disagrees is named);
    - ``"dtype"``: bfloat16 ``xs`` with float32 ``params`` run on ``scan``'s autodiff and,
      where the hand backward is claimed, on ``backward="manual"`` and ``manual_bptt``,
      with the gradient dtypes of ``jax.vjp`` and within 5% of the largest gradient
      entry of autodiff (skipped where autodiff itself cannot run them).

    A row fails when ``|a - b| > tol * (1 + |b|)`` anywhere (``tol`` 1e-9 in float64, a few
    roundings of the coarsest dtype the cell computes in otherwise, such as a cell with
    ``dtype=jnp.bfloat16``), or when the cell's method raises; its ``detail`` names the
    quantity, the first step ``t`` and the leaf that disagree and by how much.

    Args:
      cell: any cell.
      params: its parameters (cast to float64 for the checks).
      xs: ``[T, input_size]`` or ``[T, *batch, input_size]``; a few steps suffice.
      carry: the initial carry (``None``: ``cell.initial_carry``); zeros can hide a wrong
        recurrent term at the first step, the trajectory's later steps do not.

    Returns:
      A :class:`CheckReport`: ``report.ok``, one row per claimed capability plus the dtype
      row; ``print(report)`` shows the table.

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> cell = recurrax.MinGRU(4)
      >>> report = recurrax.check_cell(cell, cell.init(jax.random.key(0), 3), jnp.ones((5, 3)))
      >>> report.ok, [r.name for r in report.rows]
      (True, ['split form', 'linear coefficients', 'dtype'])
    """
    check_cell_object(cell)
    xs = check_xs(xs)
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        to64 = lambda t: jax.tree.map(lambda a: np.asarray(a, np.float64), t)  # noqa: E731
        params64, xs64 = to64(params), to64(xs)
        carry64 = to64(cell.initial_carry(xs.shape[1:-1], jnp.float64) if carry is None else carry)
        tol = _tolerance(cell, params64, carry64, xs64)
        carries = jax.jit(_trajectory, static_argnums=0)(cell, params64, carry64, xs64)
        checks = {
            "split form": (SplitForm, lambda: _check_split(cell, params64, xs64, carry64, carries, tol)),
            "hand backward": (HandBackward, lambda: _check_backward(cell, params64, xs64, carries, tol, rng)),
            "jacobian diagonal": (JacobianDiagonal, lambda: _check_diagonal(cell, params64, xs64, carries, tol)),
            "linear coefficients": (LinearRecurrence, lambda: _check_linear(cell, params64, xs64, carries, tol, rng)),
            "noise": (Stochastic, lambda: _check_noise(cell, params64, xs64, carry64, tol, rng)),
        }
        rows = [_guarded(name, tol, fn) for name, (protocol, fn) in checks.items() if isinstance(cell, protocol)]
    rows.append(_check_dtype(cell, params, xs, carry))  # outside x64: float32 params stay float32
    title = f"check_cell({cell!r}), float64, T={xs.shape[0]}, batch={tuple(xs.shape[1:-1])}"
    return CheckReport(tuple(rows), title)


# -- the parity matrix ----------------------------------------------------------------------------

# Agreement of two implementations of the same gradient, relative to each leaf's largest entry:
# a few roundings, compounded over the steps, in the dtype they compute in.
PARITY_TOL = {"float64": 1e-9, "float32": 1e-5, "float16": 1e-2, "bfloat16": 5e-2}


def _implementations(cell, batch: tuple, length) -> dict:
    """Every way recurrax has of computing ``scan(cell, ...)`` and its gradient, as
    ``name -> run(params, xs, carry) -> (final, ys)``."""
    from recurrax._core._parallel import parallel_scan

    def via(**options):
        return lambda p, x, c: scan(cell, p, x, c, length=length, **options)

    runs = {}
    if isinstance(cell, HandBackward):
        runs['backward="manual"'] = via(backward="manual")
    for policy in ("dots", "carry", "all"):
        runs[f'checkpoint="{policy}"'] = via(checkpoint=policy)
    if isinstance(cell, SplitForm):
        for placement in ("before", "in_loop"):
            runs[f'projection="{placement}"'] = via(projection=placement)
    runs["parallel_scan"] = lambda p, x, c: parallel_scan(cell, p, x, c, length=length)[:2]
    if batch:
        def one(p, x, c, n):
            return scan(cell, p, x, c, length=n)

        def vmapped(p, x, c):
            n = jnp.broadcast_to(jnp.asarray(x.shape[0] if length is None else length, jnp.int32), batch)
            f = one
            for _ in batch:  # each level maps xs' axis 1 and the carry's and length's axis 0
                f = jax.vmap(f, in_axes=(None, 1, 0, 0), out_axes=(0, 1))
            return f(p, x, c, n)

        runs["jax.vmap of the one-example form"] = vmapped
    return runs


def _cudnn_run(cell, length):
    """``run`` through cuDNN's LSTM kernel, or the reason it cannot run here."""
    from recurrax._core import _cudnn
    from recurrax._core._layers import Unidirectional

    try:
        _cudnn.check_impl("cudnn", [cell])
    except ValueError:
        return None, "not a standard LSTM"
    try:
        jax.devices("gpu")
    except RuntimeError:
        return None, "no GPU in this process"
    layer = Unidirectional(cell, impl="cudnn")
    return lambda p, x, c: layer.apply(p, x, length=length, carry=c), None


def _default_parity_loss(rng, final, ys):
    w = rng.normal(size=ys.shape)
    cw = [rng.normal(size=leaf.shape) for leaf in jax.tree.leaves(final)]

    def loss(final, ys):
        total = jnp.sum(jnp.asarray(w, ys.dtype) * jnp.tanh(ys))
        return total + sum(jnp.sum(jnp.asarray(v, c.dtype) * c) for c, v in zip(jax.tree.leaves(final), cw))

    return loss


def _leaf_scaled(tree, ref):
    """``tree`` and ``ref`` divided leaf by leaf by ``max(1, max |ref|)``."""
    scale = jax.tree.map(lambda r: max(1.0, float(np.abs(np.asarray(r, np.float64)).max(initial=0.0))), ref)
    div = lambda t: jax.tree.map(lambda a, s: np.asarray(a, np.float64) / s, t, scale)  # noqa: E731
    return div(tree), div(ref)


def _agreement(got, ref, tol) -> list:
    (v, g), (rv, rg) = got, ref
    return [compare("values (final carry, ys)", *_leaf_scaled(v, rv), tol, per_step=False),
            compare("gradients (params, xs, carry)", *_leaf_scaled(g, rg), tol, per_step=False)]


def parity(
    cell: Any,
    params: Params,
    xs: Array,
    *,
    carry: Any = None,
    loss: Callable[[Any, Array], Array] | None = None,
    length: Any = None,
    dtypes: tuple = ("float64", "float32", "bfloat16"),
    eps: float = 1e-6,
) -> CheckReport:
    """Run the same cell and loss through every implementation and report each one's agreement.

    In each dtype of ``dtypes`` (params, ``xs`` and carry cast to it), the values
    ``(final carry, ys)`` and the gradient of ``loss`` with respect to ``(params, xs,
    carry)`` of ``scan`` (autodiff, jitted) are the reference, and each of these is
    compared with it: ``backward="manual"`` (hand backward), ``checkpoint="dots"``,
    ``"carry"`` and ``"all"``, ``projection="before"`` and ``"in_loop"`` (split form),
    :func:`recurrax.parallel_scan`, ``jax.vmap`` of the one-example form against the batch
    form (a batch ``xs``), the same autodiff run eagerly (no ``jit``), and cuDNN's LSTM
    kernel (float32, a standard :class:`recurrax.LSTM` and a GPU; reported as skipped
    otherwise). Each leaf agrees when ``|a - b| <= tol * max(1, max |b|)`` with ``tol`` from
    ``PARITY_TOL`` (float64 1e-9, float32 1e-5, bfloat16 0.05; that of the dtype the cell
    computes in inside when it is coarser, as for ``dtype=jnp.bfloat16``).

    In float64 it also checks forward mode: ``jax.jvp`` of the loss in a random direction
    against the gradient's dot product with it (the dot-product test) and against central
    finite differences; and second order: the Hessian-vector product (``jax.jvp`` of
    ``jax.grad``) against finite differences of the gradient (exact for a twice
    differentiable cell; a relu cell is piecewise smooth and agrees away from its kinks).

    Args:
      cell, params, xs, carry, length: as in :func:`recurrax.scan`.
      loss: ``loss(final_carry, ys) -> scalar``; ``None``: a fixed random nonlinear loss
        of every output and of the final carry.
      dtypes: any of ``"float64"``, ``"float32"``, ``"bfloat16"``.
      eps: the finite-difference step of the float64 checks.

    Returns:
      A :class:`CheckReport` with a row per (implementation, dtype) and the float64
      forward-mode and second-order rows.

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> cell = recurrax.MinGRU(3)
      >>> report = recurrax.parity(cell, cell.init(jax.random.key(0), 2), jnp.ones((4, 2, 2)),
      ...                          dtypes=("float32",))
      >>> report.ok, report["parallel_scan, float32"].status
      (True, 'pass')
    """
    check_cell_object(cell)
    xs = check_xs(xs)
    unknown = [d for d in dtypes if d not in PARITY_TOL]
    if unknown or not dtypes:
        raise ValueError(f"dtypes must be a non-empty tuple of {tuple(PARITY_TOL)}; got {dtypes!r}.")
    batch = tuple(xs.shape[1:-1])
    rng = np.random.default_rng(0)
    rows = []
    with jax.enable_x64(True):
        carry0 = cell.initial_carry(batch, jnp.float64) if carry is None else carry
        if loss is None:
            to64 = lambda t: jax.tree.map(lambda a: np.asarray(a, np.float64), t)  # noqa: E731
            final, ys = jax.eval_shape(lambda: scan(cell, to64(params), to64(xs), to64(carry0), length=length))
            loss = _default_parity_loss(rng, final, ys)
        for dtype in dtypes:
            cast = lambda t, d=dtype: jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64), d), t)  # noqa
            args = (cast(params), cast(xs), cast(carry0))
            rows += _parity_rows(cell, args, loss, length, dtype, batch)
        if "float64" in dtypes:
            args = tuple(jax.tree.map(lambda a: np.asarray(a, np.float64), t) for t in (params, xs, carry0))
            if _parity_tol(cell, args, "float64") > PARITY_TOL["float64"]:
                rows += [CheckRow(name, "skipped", 0.0, 0.0, "the cell computes in a coarser dtype than float64 "
                                  "inside: finite differences would measure its rounding")
                         for name in ("forward mode", "second order")]
            else:
                rows += _derivative_rows(cell, args, loss, length, eps, rng)
    title = f"parity({cell!r}), T={xs.shape[0]}, batch={batch}, length={length}, dtypes={tuple(dtypes)}"
    return CheckReport(tuple(rows), title)


def _parity_tol(cell, args, dtype) -> float:
    """``PARITY_TOL`` of ``dtype``, or of the coarser dtype the cell computes in inside."""
    coarse = coarsest_float(lambda p, c, x: cell.apply(p, c, x[0]), args[0], args[2], args[1])
    inner = PARITY_TOL.get(jnp.dtype(coarse).name, 0.0) if coarse is not None else 0.0
    return max(PARITY_TOL[dtype], inner)


def _parity_rows(cell, args, loss, length, dtype, batch) -> list:
    tol = _parity_tol(cell, args, dtype)

    def outputs(run):
        def f(p, x, c):
            values = run(p, x, c)
            return loss(*values), values
        (_, values), grads = jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(*args)
        return values, grads

    runs = _implementations(cell, batch, length)
    reference = jax.jit(lambda: outputs(lambda p, x, c: scan(cell, p, x, c, length=length)))()
    try:  # one compilation for all of them (about half the time of one each) ...
        results = jax.jit(lambda: {name: outputs(run) for name, run in runs.items()})()
        compute = lambda name, run: results[name]  # noqa: E731
    except Exception:  # noqa: BLE001 - ... else one each, so that the failing one is named
        compute = lambda name, run: jax.jit(lambda: outputs(run))()  # noqa: E731
    rows = []
    for name, run in runs.items():
        rows.append(_guarded(f"{name}, {dtype}", tol, lambda name=name, run=run: _agreement(compute(name, run),
                                                                                          reference, tol)))
    eager = lambda p, x, c: scan(cell, p, x, c, length=length)  # noqa: E731
    rows.append(_guarded(f"eager (no jit), {dtype}", tol, lambda: _agreement(outputs(eager), reference, tol)))
    if dtype == "float32":
        run, reason = _cudnn_run(cell, length)
        rows.append(CheckRow("cudnn, float32", "skipped", 0.0, tol, reason) if run is None else
                    _guarded("cudnn, float32", tol, lambda: _agreement(jax.jit(lambda: outputs(run))(), reference,
                                                                       tol)))
    return rows


def _derivative_rows(cell, args, loss, length, eps, rng) -> list:
    """Forward mode and second order, in float64, against the gradient and finite differences."""
    total = lambda a: loss(*scan(cell, *a, length=length))  # noqa: E731
    v = jax.tree.map(lambda a: rng.normal(size=np.shape(a)), args)
    flat_v, unravel = ravel_pytree(v)
    v = unravel(flat_v / np.linalg.norm(flat_v))
    shift = lambda a, s: jax.tree.map(lambda x, d: x + s * d, a, v)  # noqa: E731

    @jax.jit
    def run(args):
        _, jvp = jax.jvp(total, (args,), (v,))
        grad = jax.grad(total)
        dot = ravel_pytree(grad(args))[0] @ ravel_pytree(v)[0]
        fd = (total(shift(args, eps)) - total(shift(args, -eps))) / (2 * eps)
        hvp = jax.jvp(grad, (args,), (v,))[1]
        fd_grad = jax.tree.map(lambda a, b: (a - b) / (2 * eps), grad(shift(args, eps)), grad(shift(args, -eps)))
        return jvp, dot, fd, hvp, fd_grad

    def rows():
        jvp, dot, fd, hvp, fd_grad = run(args)
        return [
            row_from("forward mode", [compare("jax.jvp vs the gradient's dot product (dot-product test)", jvp, dot,
                                              1e-10, per_step=False),
                                      compare("jax.jvp vs central finite differences", jvp, fd, 1e-6,
                                              per_step=False)], 1e-6),
            row_from("second order", [compare("Hessian-vector product (jvp of grad) vs finite differences of grad",
                                              *_leaf_scaled(hvp, fd_grad), 1e-5, per_step=False)], 1e-5),
        ]

    try:
        return rows()
    except Exception as e:  # noqa: BLE001
        return [CheckRow("forward mode", "FAIL", float("inf"), 1e-6, f"raised {type(e).__name__}: {_short(e)}")]
