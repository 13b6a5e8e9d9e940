"""Gradient checking: autodiff, hand-derived BPTT and finite differences, side by side."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from recurrax._core import _noise
from recurrax._core._base import Array, HandBackward, Params
from recurrax._core._bptt import manual_bptt_steps
from recurrax._core._cells import RNN
from recurrax._core._check import check_cell
from recurrax._core._scan import masked_scan, scan
from recurrax._core._validate import check_cell as check_cell_object
from recurrax._core._validate import (
    check_positive_int,
    check_resets_and_key,
    check_xs,
    coarsest_float,
    mask_padding,
    per_example_length,
    segment_starts,
)


@dataclasses.dataclass(frozen=True)
class GradcheckRow:
    """One comparison for one input leaf.

    Attributes:
      leaf: which input, e.g. ``"params.W"``, ``"xs"``, ``"carry.c"``.
      check: ``"<gradient> vs <reference>"``.
      max_abs_err: ``max |a - b|``.
      max_rel_err: ``max |a - b| / max(|a|, |b|)`` (0 where both are 0).
      atol, rtol: the tolerances of this check.
      passed: ``|a - b| <= atol + rtol * |b|`` everywhere.
      step: for the per-step rows (leaf ``"dL/ds_{t-1}"``, the cotangent of the carry
        entering step ``t``): the first step, in the backward pass's order (from the last
        step to the first; the other way with ``reverse=True``), at which it disagrees;
        ``None`` otherwise.
    """

    leaf: str
    check: str
    max_abs_err: float
    max_rel_err: float
    atol: float
    rtol: float
    passed: bool
    step: int | None = None


@dataclasses.dataclass(frozen=True)
class GradcheckReport:
    """What :func:`gradcheck` found; ``str(report)`` is a readable table.

    Attributes:
      rows: one :class:`GradcheckRow` per (leaf, comparison).
      title: what was checked.
      reverse: the direction of the checked ``scan``.
      cell_check: the :func:`recurrax.check_cell` report of the cell's claims, which
        :func:`gradcheck` runs first (right gradients through ``apply`` do not make a
        wrong ``step`` or ``step_bwd`` right).
      passed: whether every row passed and the cell's claims hold.
      first_bad_step: the step ``t`` whose backward first goes wrong: the first, in the
        backward pass's order, at which the carry cotangent ``dL/ds_{t-1}`` it hands back
        disagrees (``None`` when they all agree).
    """

    rows: tuple
    title: str
    cell_check: Any = None
    reverse: bool = False

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows) and (self.cell_check is None or self.cell_check.ok)

    @property
    def first_bad_step(self) -> int | None:
        steps = [r.step for r in self.rows if r.step is not None]
        if not steps:
            return None
        return min(steps) if self.reverse else max(steps)

    def __str__(self) -> str:
        header = ("leaf", "check", "max abs err", "max rel err", "atol", "rtol", "result")
        body = [
            (r.leaf, r.check, f"{r.max_abs_err:.2e}", f"{r.max_rel_err:.2e}", f"{r.atol:.0e}",
             f"{r.rtol:.0e}", ("pass" if r.passed else "FAIL") + ("" if r.step is None else f" from step t={r.step}"))
            for r in self.rows
        ]
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
        line = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
        failed = sum(not r.passed for r in self.rows)
        verdict = "all passed" if failed == 0 else f"{failed} FAILED"
        if self.first_bad_step is not None:
            verdict += (f"; the carry cotangent dL/ds_{{t-1}} first disagrees at step t={self.first_bad_step} "
                        f"(the backward pass runs from the last step: look at step t's backward)")
        table = [self.title, line(header), line(["-" * w for w in widths]), *map(line, body), verdict]
        if self.cell_check is not None:
            table = [repr(self.cell_check), "", *table]
            if not self.cell_check.ok:
                table.append("the cell's claims FAILED (check_cell, above)")
        return "\n".join(table)


def _compare(leaf, check, a, b, atol, rtol) -> GradcheckRow:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    err = np.abs(a - b)
    scale = np.maximum(np.abs(a), np.abs(b))
    rel = np.where(scale > 0, err / np.where(scale > 0, scale, 1.0), 0.0)
    ok = bool(np.all(err <= atol + rtol * np.abs(b)))
    return GradcheckRow(leaf, check, float(err.max(initial=0.0)), float(rel.max(initial=0.0)), atol, rtol, ok)


def _compare_steps(check, a, b, atol, rtol, reverse) -> GradcheckRow:
    """:func:`_compare` of per-step values ``[T, k]``, with the first step in the backward
    pass's order that disagrees."""
    row = _compare("dL/ds_{t-1}", check, a, b, atol, rtol)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    bad = np.flatnonzero((np.abs(a - b) > atol + rtol * np.abs(b)).reshape(a.shape[0], -1).any(axis=1))
    return row if not bad.size else dataclasses.replace(row, step=int(bad.min() if reverse else bad.max()))


def _entering_loss(cell, loss, params, xs, carry, length, reverse, resets, key):
    """``offsets -> loss`` of ``scan`` with ``offsets[t]`` added to the carry entering step ``t``
    (after a reset's restart): its gradient at zero is ``dL/ds_{t-1}`` per step (zero at padding
    steps). The noise of ``key`` is drawn as ``scan`` draws it."""
    lengths = None if length is None else per_example_length(length, xs.shape[0], xs.shape[1:-1])
    noise = _noise.draw(cell, params, xs, key)
    xs, valid = mask_padding(xs, lengths)
    starts = segment_starts(resets, valid, reverse)

    def total(offsets):
        def step(c, xo, n):
            return _noise.bind(cell, noise, n).apply(params, jax.tree.map(jnp.add, c, xo[1]), xo[0])

        return loss(*masked_scan(step, carry, (xs, offsets), valid, starts, _noise.step_noise(noise), reverse))

    return total


def _default_loss(rng, carry, ys_shape):
    """A fixed, nonlinear loss of every output and of the final carry."""
    w = rng.normal(size=ys_shape)
    cw = [rng.normal(size=leaf.shape) for leaf in jax.tree.leaves(carry)]

    def loss(final_carry, ys):
        return jnp.sum(w * jnp.tanh(ys)) + sum(jnp.sum(c * v) for c, v in zip(jax.tree.leaves(final_carry), cw))

    return loss


def _check_options(mode, num_directions, max_entries, seed, **numbers):
    if mode not in ("directions", "entries"):
        raise ValueError(f'mode must be "directions" or "entries"; got {mode!r}.')
    # 0 directions would compare nothing with finite differences and still "pass".
    check_positive_int("num_directions", num_directions)
    check_positive_int("max_entries", max_entries)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int; got {seed!r}.")
    for name, value in numbers.items():
        try:
            ok = math.isfinite(value) and (value > 0 if name == "eps" else value >= 0)
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(f"{name} must be a finite number {'> 0' if name == 'eps' else '>= 0'}; got {value!r}.")


def _check_float64(cell, total, args, eps):
    """Raise unless ``total(args)`` computes in float64 throughout (finite differences need it)."""
    coarse = coarsest_float(total, args)
    if coarse is not None and jnp.finfo(coarse).eps > jnp.finfo(jnp.float64).eps:
        name = jnp.dtype(coarse).name
        raise ValueError(
            f"gradcheck compares with finite differences, which need float64 throughout: {name} rounds at "
            f"{float(jnp.finfo(coarse).eps):.1e}, which swamps a difference quotient with eps={eps:g}. "
            f"But {cell!r} (or the loss) computes in {name} inside, although gradcheck passes float64 params, "
            f"xs and carry. Check a float64 copy of the same formulas: for a built-in cell "
            f"dataclasses.replace(cell, dtype=None) computes in its inputs' dtype (rebuild a stack or layer "
            f"from such cells)."
        )


def _name(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator=".")


def gradcheck(
    cell: Any,
    params: Params,
    xs: Array,
    carry: Any = None,
    *,
    loss: Callable[[Any, Array], Array] | None = None,
    length: Any = None,
    reverse: bool = False,
    resets: Any = None,
    key: Any = None,
    mode: str = "directions",
    num_directions: int = 4,
    eps: float = 1e-6,
    atol: float = 1e-7,
    rtol: float = 1e-5,
    exact_atol: float = 1e-10,
    exact_rtol: float = 1e-8,
    max_entries: int = 2048,
    seed: int = 0,
) -> GradcheckReport:
    """Check the gradient of ``loss(*scan(cell, params, xs, carry))`` three ways.

    Everything runs in float64 (inside ``jax.enable_x64``; ``params``, ``xs`` and ``carry``
    are cast to it, so bfloat16 params from ``param_dtype`` are fine). A cell that computes
    in a lower precision inside, such as ``recurrax.LSTM(8, dtype=jnp.bfloat16)``, is
    refused with a ValueError rather than reported as failing everywhere: in bfloat16,
    finite differences measure rounding, not the gradient. Its formulas are those of
    ``dataclasses.replace(cell, dtype=None)``; check that copy instead.

    For every input leaf (each parameter, ``xs``, each carry leaf) it compares:

    - reverse-mode autodiff (``jax.grad``) against central finite differences
      ``(L(theta + eps v) - L(theta - eps v)) / (2 eps)``;
    - :func:`recurrax.manual_bptt` against finite differences and against autodiff,
      when the cell has the hand-backward capability (``step_fwd``, ``step_bwd``,
      ``step_bwd_params``; docs/cells.md) and accepts this configuration (otherwise those
      rows are left out).

    It first runs :func:`recurrax.check_cell` (each claimed capability against ``apply``;
    ``report.cell_check``): gradients through ``apply`` can be right while ``step`` or
    ``step_bwd`` are wrong, and ``report.passed`` needs both.

    To say *where* a gradient goes wrong, it also compares per step the cotangent of the
    carry entering step ``t``, ``dL/ds_{t-1}``: autodiff's (the gradient of a zero offset
    added to that carry), ``manual_bptt``'s (its reverse scan's) and finite differences of
    that offset. Those rows (leaf ``"dL/ds_{t-1}"``) and ``report.first_bad_step`` name the
    first step, in the backward pass's order, whose cotangent disagrees: a ``step_bwd``
    wrong at step ``t`` is reported at ``t``.

    ``mode="directions"`` uses ``num_directions`` random unit directions per leaf (fast,
    like ``torch.autograd.gradcheck(fast_mode=True)``); ``mode="entries"`` perturbs every
    entry on its own (small problems only, at most ``max_entries`` entries in all).

    Args:
      cell, params, xs, carry, length, reverse, resets: as in :func:`recurrax.scan`.
      key: as in :func:`recurrax.scan`: a stochastic cell's noise is drawn once from it
        and held fixed (a constant of the loss, as in training); ``None``: evaluation mode.
      loss: ``loss(final_carry, ys) -> scalar``; ``None`` uses a fixed random nonlinear
        function of every output and of the final carry.
      mode: ``"directions"`` or ``"entries"``.
      num_directions: directions per leaf in ``"directions"`` mode.
      eps: the finite-difference step.
      atol, rtol: tolerances of the comparisons with finite differences
        (``|a - fd| <= atol + rtol * |fd|``).
      exact_atol, exact_rtol: tolerances of manual BPTT against autodiff.
      max_entries: the size limit of ``"entries"`` mode.
      seed: for the directions and the default loss.

    Returns:
      A :class:`GradcheckReport`; ``report.passed`` is the verdict, ``print(report)``
      shows the table.

    Raises:
      ValueError: for a computation in a precision coarser than float64 (above), a bad
        ``mode``, ``num_directions`` or ``max_entries`` below 1, ``eps`` not > 0, a
        negative or non-finite tolerance, a negative ``seed``, or ``"entries"`` mode on
        more than ``max_entries`` entries.

    Example:
      >>> import jax, jax.numpy as jnp, recurrax
      >>> cell = recurrax.LSTM(3)
      >>> params = cell.init(jax.random.key(0), 2)
      >>> report = recurrax.gradcheck(cell, params, jnp.ones((4, 2)), length=3)
      >>> report.passed, sorted({r.check for r in report.rows})
      (True, ['autodiff vs finite diff', 'manual_bptt vs autodiff', 'manual_bptt vs finite diff'])
    """
    _check_options(mode, num_directions, max_entries, seed, eps=eps, atol=atol, rtol=rtol, exact_atol=exact_atol,
                   exact_rtol=exact_rtol)
    with jax.enable_x64(True):
        # NumPy for the set-up, one jit for all the numbers: eager JAX ops would each compile.
        to64 = lambda t: jax.tree.map(lambda a: np.asarray(a, np.float64), t)
        check_cell_object(cell)
        params, xs = to64(params), to64(check_xs(xs))
        carry = to64(cell.initial_carry(xs.shape[1:-1], jnp.float64) if carry is None else carry)
        args = {"params": params, "xs": xs, "carry": carry}
        flat, unravel = ravel_pytree(args)
        if mode == "entries" and flat.size > max_entries:
            raise ValueError(f'mode="entries" would perturb {flat.size} entries (max_entries={max_entries}); '
                             f'use mode="directions" or a smaller problem.')
        resets, key = check_resets_and_key(cell, resets, key, xs)
        run = lambda p, x, c: scan(cell, p, x, c, length=length, reverse=reverse, resets=resets, key=key)  # noqa: E731
        if loss is None:
            final, ys = jax.eval_shape(run, params, xs, carry)
            loss = _default_loss(np.random.default_rng(seed), final, ys.shape)
        total = lambda a: loss(*run(a["params"], a["xs"], a["carry"]))
        _check_float64(cell, total, args, eps)
        cell_check = check_cell(cell, params, xs, carry=carry)
        has_manual = isinstance(cell, HandBackward)

        paths_leaves = jax.tree_util.tree_flatten_with_path(args)[0]
        sizes = [int(np.size(leaf)) for _, leaf in paths_leaves]
        # Perturbation directions, one block of rows per leaf (zero outside that leaf).
        rng, blocks, offset = np.random.default_rng(seed + 1), [], 0
        for size in sizes:
            if mode == "entries":
                V = np.eye(size)
            else:
                V = rng.normal(size=(num_directions, size))
                V /= np.linalg.norm(V, axis=1, keepdims=True)
            blocks.append(np.pad(V, ((0, 0), (offset, flat.size - offset - size))))
            offset += size
        V = np.concatenate(blocks)
        # Per step: the cotangent of the carry entering each step, dL/ds_{t-1}, against one
        # random unit direction per step (finite differences of an offset added there).
        T, carry_shapes = xs.shape[0], [np.shape(c) for c in jax.tree.leaves(carry)]
        W = rng.normal(size=(T, sum(int(np.prod(s)) for s in carry_shapes)))
        W /= np.linalg.norm(W, axis=1, keepdims=True)

        def per_step(tree):  # carry-shaped leaves [T, ...] -> [T, K]
            return jnp.concatenate([a.reshape(T, -1) for a in jax.tree.leaves(tree)], axis=1)

        def from_per_step(M):  # [T, K] -> carry-shaped leaves [T, ...]
            cuts = np.cumsum([int(np.prod(s)) for s in carry_shapes])[:-1]
            parts = [m.reshape(T, *s) for m, s in zip(jnp.split(M, cuts, axis=1), carry_shapes)]
            return jax.tree.unflatten(jax.tree.structure(carry), parts)

        @jax.jit
        def compute(args, V):
            grads = {"autodiff": jax.grad(total)(args)}
            entering_loss = _entering_loss(cell, loss, args["params"], args["xs"], args["carry"], length, reverse,
                                           resets, key)
            steps = {"autodiff": per_step(jax.grad(entering_loss)(from_per_step(jnp.zeros(W.shape))))}
            if has_manual:
                final, ys = run(args["params"], args["xs"], args["carry"])
                carry_bar, ys_bar = jax.grad(loss, argnums=(0, 1))(final, ys)
                p_bar, x_bar, c_bar, entering = manual_bptt_steps(
                    cell, args["params"], args["xs"], ys_bar, carry=args["carry"], length=length,
                    carry_bar=carry_bar, reverse=reverse, resets=resets, key=key)
                grads["manual_bptt"] = {"params": p_bar, "xs": x_bar, "carry": c_bar}
                steps["manual_bptt"] = per_step(entering)
            flat = ravel_pytree(args)[0]
            f = jax.vmap(lambda d: total(unravel(flat + d)))
            fd = (f(eps * V) - f(-eps * V)) / (2 * eps)
            at_step = jnp.eye(T)[:, :, None] * W[None]  # [direction t, step, K]: W[t] at step t only
            g = jax.vmap(lambda D: entering_loss(from_per_step(D)))
            fd_steps = (g(eps * at_step) - g(-eps * at_step)) / (2 * eps)
            flat_grads = {k: ravel_pytree(g)[0] for k, g in grads.items()}
            return (flat_grads, {k: V @ g for k, g in flat_grads.items()}, fd, steps,
                    {k: jnp.sum(W * m, axis=1) for k, m in steps.items()}, fd_steps)

        flat_grads, projected, fd, steps, projected_steps, fd_steps = jax.tree.map(np.asarray, compute(args, V))
        rows, row, entry = [], 0, 0
        for (path, _), size, block in zip(paths_leaves, sizes, blocks):
            name, these = _name(path), slice(row, row + len(block))
            for method, p in projected.items():
                rows.append(_compare(name, f"{method} vs finite diff", p[these], fd[these], atol, rtol))
            if has_manual:
                mine = slice(entry, entry + size)
                rows.append(_compare(name, "manual_bptt vs autodiff", flat_grads["manual_bptt"][mine],
                                     flat_grads["autodiff"][mine], exact_atol, exact_rtol))
            row, entry = row + len(block), entry + size
        for method, p in projected_steps.items():
            rows.append(_compare_steps(f"{method} vs finite diff", p[:, None], fd_steps[:, None], atol, rtol, reverse))
        if has_manual:
            rows.append(_compare_steps("manual_bptt vs autodiff", steps["manual_bptt"], steps["autodiff"], exact_atol,
                                       exact_rtol, reverse))
    what = f"{mode} ({num_directions} per leaf)" if mode == "directions" else "entries (every entry)"
    title = (f"gradcheck, float64, central differences eps={eps:g}, {what}, "
             f"T={xs.shape[0]}, length={length}, reverse={reverse}"
             + ("" if resets is None else ", resets") + ("" if key is None else ", noise from key"))
    return GradcheckReport(tuple(rows), title, cell_check, reverse)


def planted_bug_cell(hidden_size: int, scale: float = 1.001):
    """An rnn whose tanh has a ``custom_vjp`` off by the factor ``scale``: what gradcheck must catch."""

    @jax.custom_vjp
    def tanh(a):
        return jnp.tanh(a)

    def fwd(a):
        y = jnp.tanh(a)
        return y, y

    def bwd(y, g):
        return (scale * g * (1 - y * y),)

    tanh.defvjp(fwd, bwd)
    return RNN(hidden_size, activation=tanh)
