"""Converters between recurrax parameters and PyTorch, flax and equinox.

torch, flax and equinox are optional: they are imported inside the functions that need
them, never by ``import recurrax``; a converter called without its library raises
``ImportError`` (``pip install "recurrax[anchors]"``).

What the converters take care of, with recurrax's layout first (docs/design.md)::

    recurrax         x @ U + h @ W + b;  U [I, k*H], W [H, k*H], b [k*H]
    torch, equinox   W_ih @ x + b_ih + W_hh @ h + b_hh;  W_ih [k*H, I], so U = W_ih.T
    flax             x @ kernel (+ bias): one Dense per gate, or one fused Dense per side

    library, cell                gates    biases -> recurrax                    carry
    torch LSTM, LSTMCell         i f g o  b = b_ih + b_hh                       (h, c) = LSTMCarry
      (proj_size=P)                       W_hr = weight_hr.T [H, P]             h [P], c [H]
    torch GRU, GRUCell           r z n    b = b_ih + b_hh (r, z), b_ih (n);     h
                                          b_hn = b_hh (n)
    torch RNN, RNNCell           -        b = b_ih + b_hh                       h
    flax LSTMCell,               i f g o  b = the hidden side's biases          (c, h): reversed
      OptimizedLSTMCell                   (hi hf hg ho; nnx fused: dense_h)
    flax GRUCell                 r z n    b = the input side's biases           h
                                          (ir iz in); b_hn = hn's bias
                                          (nnx: no b_hn, read as 0)
    flax SimpleCell              -        b = the input side's bias             h
    equinox LSTMCell             i f g o  b = bias                              (h, c) = LSTMCarry
    equinox GRUCell              r z n    b = bias; b_hn = bias_n               h

- **GRU form.** PyTorch, flax (linen and nnx) and equinox all compute
  ``n = tanh(x U_n + b_n + r * (h W_n + b_hn))``: recurrax's ``GRU(H, reset_after=True)``
  (:class:`~recurrax.GRUResetAfterParams`). The reset-before ``GRU(H)`` (Cho et al. 2014, reset before
  ``W_n``) has no counterpart in these libraries; converting it raises. flax.nnx's
  ``GRUCell`` has no ``b_hn`` (it reads as ``b_hn = 0``, and writing a nonzero one raises).
- **GRU update gate.** They all write ``h' = (1 - z) * n + z * h``; recurrax writes
  ``h' = (1 - z) * h + z * n`` (the equations in recurrax/_core/_cells.py), so recurrax's ``z`` is their ``1 - z``
  and, since ``1 - sigmoid(a) = sigmoid(-a)``, the converters negate the ``z`` block of
  ``U``, ``W`` and ``b``.
- **Double biases.** Where a library has a bias on both sides, recurrax keeps their sum in
  ``b``; going back, ``b`` goes to the input side (flax's LSTM: the hidden side, its only
  bias) and the other side gets zeros. So recurrax -> library -> recurrax is bitwise exact,
  and library -> recurrax -> library gives the same function with the biases moved.
- **flax's LSTM carry** is ``(c, h)``; recurrax's :class:`~recurrax.LSTMCarry` is
  ``(h, c)``: ``LSTMCarry(h=flax_carry[1], c=flax_carry[0])``.
- flax's ``SimpleCell(residual=True)`` computes ``tanh(x U + b + h W + h)``: it converts
  to ``W + I`` (equal in exact arithmetic, so that round trip is not bitwise). flax cells
  always have biases: recurrax params with ``b=None`` are written as zeros.
"""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from recurrax._core._base import Cell, Params
from recurrax._core._cells import GRU, LSTM, RNN, CellParams, GRUResetAfterParams, LSTMCarry
from recurrax._core._layers import Bidirectional, Deep, Unidirectional

__all__ = [
    "final_state_to_torch",
    "from_equinox",
    "from_flax",
    "from_torch",
    "to_equinox",
    "to_flax",
    "to_torch",
]

_GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def _require(module: str, caller: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        lib = module.split(".")[0]
        raise ImportError(
            f"recurrax.{caller} needs {lib}, an optional dependency of recurrax; install it "
            f'with pip install "recurrax[anchors]" (or pip install {lib}).'
        ) from e


# -- the shared core: one cell's weights in "their" form <-> recurrax params -------------


class _Raw(NamedTuple):
    """One cell as the other libraries hold it: ``x @ U + b_x + h @ W + b_h``.

    Their gate order, their GRU update-gate sign; ``U``, ``W`` (and the LSTM projection
    ``W_hr``, ``h = (o * tanh(c)) @ W_hr``) already in recurrax's ``x @ U`` orientation; a
    missing bias is ``None``; ``b_x``, ``b_h`` are ``[k*H]``. NumPy arrays: conversion is
    host-side work, and NumPy needs no compiling per shape.
    """

    U: np.ndarray
    W: np.ndarray
    b_x: np.ndarray | None
    b_h: np.ndarray | None
    W_hr: np.ndarray | None = None


def _flip_z(a: np.ndarray, H: int) -> np.ndarray:
    # recurrax's z is their 1 - z = sigmoid(-a): negate the z block (an exact involution).
    return np.concatenate([a[..., :H], -a[..., H : 2 * H], a[..., 2 * H :]], axis=-1)


def _add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # a + 0.0 turns -0.0 into +0.0; keeping a where b is zero makes round trips bitwise.
    return np.where(b == 0, a, a + b)


def _to_recurrax(kind: str, raw: _Raw) -> Params:
    U, W, b_x, b_h, W_hr = raw
    H = W.shape[1] // _GATES[kind]
    b_hn = None
    if kind == "gru" and (b_x is not None or b_h is not None):
        b_hn = np.zeros(H, W.dtype) if b_h is None else b_h[2 * H :]
        b_h = None if b_h is None else np.concatenate([b_h[: 2 * H], np.zeros(H, b_h.dtype)])
    # A missing side is not added as zeros: that would turn a -0.0 into +0.0.
    b = b_h if b_x is None else b_x if b_h is None else _add(b_x, b_h)
    if kind == "gru":
        b = None if b is None else _flip_z(b, H)
        params = GRUResetAfterParams(_flip_z(U, H), _flip_z(W, H), b, b_hn)
    else:
        params = CellParams(U, W, b, W_hr=W_hr)
    return jax.tree.map(jnp.asarray, params)


# recurrax's variant fields (CellParams, GRUResetAfterParams) that no other library has.
_VARIANT_FIELDS = ("peephole", "gain_x", "gain_h", "gain_c", "b_c")


def _from_recurrax(kind: str, params: Any, H: int, target: str, bias_on_h: bool = False,
                   proj_size: int | None = None) -> _Raw:
    """The inverse of :func:`_to_recurrax`, putting ``b`` on one side and zeros on the other."""
    k = _GATES[kind]
    variant = [name for name in _VARIANT_FIELDS if getattr(params, name, None) is not None]
    if variant:
        raise ValueError(
            f"these params have {', '.join(variant)} (a recurrax cell built with peephole=True or "
            f"layer_norm=True), which {target} does not have. Convert the params of a cell without them."
        )
    if getattr(params, "W_hr", None) is not None and not proj_size:
        raise ValueError(
            f"these params have W_hr (recurrax.LSTM(H, proj_size=P)); {target} has no projection. "
            f"Use torch.nn.LSTM(input_size, H, proj_size=P)."
        )
    if kind == "gru" and isinstance(params, CellParams):
        raise ValueError(
            f"{target} is a reset-after GRU (n = tanh(x U_n + b_n + r * (h W_n + b_hn))); these "
            f"are CellParams of the reset-before GRU (n = tanh(x U_n + (r * h) W_n + b_n)), which it cannot represent. "
            f"Use recurrax.GRU(H, reset_after=True) (GRUResetAfterParams)."
        )
    expected = GRUResetAfterParams if kind == "gru" else CellParams
    U, W = getattr(params, "U", None), getattr(params, "W", None)
    rows = proj_size or H
    if (not isinstance(params, expected) or getattr(U, "ndim", 0) != 2 or U.shape[1] != k * H
            or getattr(W, "shape", None) != (rows, k * H)
            or proj_size and getattr(params.W_hr, "shape", None) != (H, proj_size)):
        got = jax.tree.map(jnp.shape, params) if isinstance(params, tuple) else type(params).__name__
        what = f"a {kind} cell with hidden_size={H}" + (f" and proj_size={proj_size}" if proj_size else "")
        projection = f", W_hr [{H}, {proj_size}]" if proj_size else ""
        raise ValueError(
            f"params do not fit {target} ({what}): expected "
            f"{expected.__name__}(U [input_size, {k * H}], W [{rows}, {k * H}], b [{k * H}] or None{projection}); "
            f"got {got}."
        )
    U, W, b, W_hr = _np(U), _np(W), _np(params.b), _np(getattr(params, "W_hr", None))
    if kind == "gru":
        U, W = _flip_z(U, H), _flip_z(W, H)
        b = None if b is None else _flip_z(b, H)
    if b is None:
        return _Raw(U, W, None, None, W_hr)
    zeros = np.zeros_like(b)
    if kind == "gru":
        b_hn = zeros[2 * H :] if params.b_hn is None else _np(params.b_hn)
        return _Raw(U, W, b, np.concatenate([zeros[: 2 * H], b_hn]))
    return _Raw(U, W, zeros, b, W_hr) if bias_on_h else _Raw(U, W, b, zeros, W_hr)


def _make_cell(kind: str, H: int, params: Params, **kwargs) -> Cell:
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    kwargs.update(use_bias=params.b is not None, param_dtype=params.U.dtype)
    if kind == "rnn":
        kwargs.pop("gate_activation", None)
        return RNN(H, **kwargs)
    return LSTM(H, **kwargs) if kind == "lstm" else GRU(H, reset_after=True, **kwargs)


def _np(a: Any, dtype: Any = None) -> np.ndarray | None:
    return None if a is None else np.asarray(a, None if dtype is None else jnp.dtype(dtype))


# -- PyTorch ------------------------------------------------------------------------------


class _TorchSpec(NamedTuple):
    kind: str
    activation: Any
    suffixes: list  # parameter-name suffixes, flat: layer 0 fwd, layer 0 bwd, layer 1 fwd, ...
    layers: tuple | None  # (num_layers, bidirectional) for nn.RNN/LSTM/GRU, None for a cell
    proj_size: int | None = None  # nn.LSTM(proj_size=P): weight_hr [P, H] per layer and direction


def _torch_spec(module: Any, caller: str) -> _TorchSpec:
    nn = _require("torch", caller).nn
    cells = {nn.RNNCell: "rnn", nn.LSTMCell: "lstm", nn.GRUCell: "gru"}
    for cls, kind in cells.items():
        if isinstance(module, cls):
            relu = getattr(module, "nonlinearity", "tanh") == "relu"
            return _TorchSpec(kind, jax.nn.relu if relu else None, [""], None)
    if isinstance(module, (nn.RNN, nn.LSTM, nn.GRU)):
        kind = {"RNN_TANH": "rnn", "RNN_RELU": "rnn", "LSTM": "lstm", "GRU": "gru"}[module.mode]
        dirs = ["", "_reverse"] if module.bidirectional else [""]
        suffixes = [f"_l{k}{d}" for k in range(module.num_layers) for d in dirs]
        act = jax.nn.relu if module.mode == "RNN_RELU" else None
        return _TorchSpec(kind, act, suffixes, (module.num_layers, module.bidirectional),
                          getattr(module, "proj_size", 0) or None)
    t = type(module)
    raise TypeError(
        f"{caller} supports torch.nn.RNN, torch.nn.LSTM, torch.nn.GRU, torch.nn.RNNCell, "
        f"torch.nn.LSTMCell and torch.nn.GRUCell; got {t.__module__}.{t.__qualname__}."
    )


def _from_tensor(t: Any, dtype: Any) -> np.ndarray | None:
    if t is None:
        return None
    t = t.detach().cpu()
    source = jnp.dtype(str(t.dtype).removeprefix("torch."))
    # torch cannot export bfloat16 to NumPy: go through float32, which holds it exactly.
    a = t.float().numpy() if source == jnp.bfloat16 else t.numpy()
    return _np(a, dtype or source)


def from_torch(module: Any, *, dtype: Any = None) -> tuple[Any, Params]:
    """Convert a PyTorch recurrent module or cell to recurrax.

    For ``torch.nn.RNN`` (``nonlinearity`` ``"tanh"`` or ``"relu"``), ``torch.nn.LSTM``
    and ``torch.nn.GRU`` with any ``num_layers``, ``bidirectional``, ``bias`` and
    ``batch_first``, returns ``(layer, params)``: ``layer`` is
    ``recurrax.Deep(*[recurrax.Bidirectional(cell)] * num_layers)`` (``Unidirectional``
    when not bidirectional) with ``cell`` one of ``RNN(H)``, ``LSTM(H)``,
    ``GRU(H, reset_after=True)``, and ``params`` is a tuple with one entry per layer:
    the cell's params, or :class:`~recurrax.Bidirectional.Params` ``(forward, backward)``.
    An LSTM with ``proj_size=P`` becomes ``LSTM(H, proj_size=P)`` (``W`` ``[P, 4H]`` is
    ``weight_hh.T``, ``W_hr`` ``[H, P]`` is ``weight_hr.T``; outputs ``[T, D*P]``).

    ``layer.apply(params, xs, *, length=None) -> (final_carry, ys)`` takes ONE example
    ``xs`` ``[T, input_size]``, time-major whatever ``batch_first`` says (``batch_first``
    only concerns how the torch module is called; batch recurrax with ``jax.vmap``), and
    returns ``ys`` ``[T, num_directions * H]`` equal to the module's output for that
    example, zero past ``length``, exactly as with
    ``torch.nn.utils.rnn.pack_padded_sequence`` (the backward direction starts at
    ``xs[length - 1]``). :func:`final_state_to_torch` turns ``final_carry`` into
    ``h_n`` (and ``c_n``).

    For ``torch.nn.RNNCell``, ``LSTMCell`` and ``GRUCell`` returns ``(cell, params)``
    instead: a :class:`~recurrax.Cell` and its params.

    The module's dropout between layers (``dropout > 0``) is a training-time
    regularizer: the converted layer has none, it computes what the module computes in
    ``eval()`` mode. Biases are summed (see the module docstring); ``bias=False`` gives
    ``b=None`` (and ``b_hn=None``).

    Args:
      module: the torch module or cell; it is not modified.
      dtype: the dtype of the returned params; ``None`` keeps the module's (a float64
        module needs ``jax.config.update("jax_enable_x64", True)``, or JAX gives float32).

    Returns:
      ``(layer, params)`` for a module, ``(cell, params)`` for a cell.

    Raises:
      TypeError: for any other module. ImportError: if torch is not installed.

    Example:
      >>> import jax.numpy as jnp, numpy as np, torch, recurrax
      >>> module = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
      >>> layer, params = recurrax.from_torch(module)
      >>> xs = jnp.asarray(np.random.default_rng(0).normal(size=(5, 3)), jnp.float32)
      >>> final, ys = layer.apply(params, xs, length=4)
      >>> with torch.no_grad():
      ...     out, (h_n, c_n) = module(torch.from_numpy(np.array(xs[:4])))
      >>> ys.shape, bool(np.allclose(ys[:4], out.numpy(), atol=1e-5)), bool((ys[4:] == 0).all())
      ((5, 8), True, True)
      >>> lstmp, params = recurrax.from_torch(torch.nn.LSTM(3, 4, proj_size=2))  # PyTorch's LSTMP
      >>> lstmp, params[0].W.shape, params[0].W_hr.shape
      (Deep(Unidirectional(LSTM(hidden_size=4, proj_size=2))), (2, 16), (4, 2))
    """
    spec = _torch_spec(module, "from_torch")

    def read(s):
        get = lambda name: _from_tensor(getattr(module, name + s, None), dtype)
        W_hr = get("weight_hr") if spec.proj_size else None
        raw = _Raw(get("weight_ih").T, get("weight_hh").T, get("bias_ih"), get("bias_hh"),
                   None if W_hr is None else W_hr.T)
        return _to_recurrax(spec.kind, raw)

    cells = [read(s) for s in spec.suffixes]
    cell = _make_cell(spec.kind, module.hidden_size, cells[0], activation=spec.activation, proj_size=spec.proj_size)
    if spec.layers is None:
        return cell, cells[0]
    num_layers, bidi = spec.layers
    if bidi:
        params = tuple(Bidirectional.Params(*cells[2 * k : 2 * k + 2]) for k in range(num_layers))
    else:
        params = tuple(cells)
    return Deep(*[(Bidirectional if bidi else Unidirectional)(cell)] * num_layers), params


def _flatten_layers(params: Any, num_layers: int, bidi: bool, target: str) -> list:
    shape = "Bidirectional.Params(forward, backward)" if bidi else "cell params"
    one_cell = (CellParams, GRUResetAfterParams, Bidirectional.Params)  # tuples, but not a layer list
    if not isinstance(params, (tuple, list)) or isinstance(params, one_cell) or len(params) != num_layers:
        raise ValueError(
            f"{target} has num_layers={num_layers}: params must be a tuple of {num_layers} "
            f"{shape} (what from_torch returns); got {type(params).__name__}"
            f"{f' of length {len(params)}' if isinstance(params, (tuple, list)) else ''}."
        )
    flat = []
    for k, p in enumerate(params):
        if isinstance(p, Bidirectional.Params) != bidi:
            raise ValueError(f"{target}: layer {k} of params must be {shape}; got {type(p).__name__}.")
        flat.extend(p if bidi else [p])
    return flat


def to_torch(params: Params, module: Any) -> Any:
    """Write recurrax params into an existing PyTorch module or cell, in place.

    The inverse of :func:`from_torch`: ``params`` has the structure ``from_torch(module)``
    returns (a tuple of per-layer params for ``nn.RNN``/``LSTM``/``GRU``, one cell's params
    for ``nn.RNNCell``/``LSTMCell``/``GRUCell``). ``b`` goes to ``bias_ih`` and
    ``bias_hh`` gets zeros (the GRU's ``b_hn`` goes to the n block of ``bias_hh``), so
    ``from_torch(to_torch(params, module))`` returns ``params`` bitwise when the dtypes
    agree. Values are cast to the module's dtype and device. Nothing is written unless
    everything fits.

    Args:
      params: recurrax params; ``b=None`` requires a ``bias=False`` module and vice versa.
        A GRU needs :class:`~recurrax.GRUResetAfterParams` (``GRU(H, reset_after=True)``).
      module: the torch module or cell to overwrite; its shapes must match.

    Returns:
      ``module``, modified in place.

    Example:
      >>> import jax, numpy as np, torch, recurrax
      >>> layer = recurrax.Deep(recurrax.Unidirectional(recurrax.GRU(4, reset_after=True)))
      >>> params = layer.init(jax.random.key(0), 3)
      >>> module = recurrax.to_torch(params, torch.nn.GRU(3, 4))
      >>> _, back = recurrax.from_torch(module)
      >>> all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)))
      True
    """
    torch = _require("torch", "to_torch")
    spec = _torch_spec(module, "to_torch")
    target = f"torch.nn.{type(module).__name__}"
    flat = [params] if spec.layers is None else _flatten_layers(params, *spec.layers, target)
    writes = []
    for p, s in zip(flat, spec.suffixes):
        raw = _from_recurrax(spec.kind, p, module.hidden_size, target, proj_size=spec.proj_size)
        if (raw.b_x is not None) != module.bias:
            which = f"the params for {s[1:]}" if s else "the params"
            have = "b=None" if raw.b_x is None else "a bias b"
            raise ValueError(f"{which} have {have}, but {target} has bias={module.bias}.")
        W_hr_T = None if raw.W_hr is None else raw.W_hr.T
        for name, value in (("weight_ih", raw.U.T), ("weight_hh", raw.W.T), ("bias_ih", raw.b_x), ("bias_hh", raw.b_h),
                            ("weight_hr", W_hr_T)):
            if value is None:
                continue
            tensor = getattr(module, name + s)
            if tuple(tensor.shape) != value.shape:
                raise ValueError(f"{target}.{name}{s} is {tuple(tensor.shape)}; the params give {value.shape}.")
            writes.append((tensor, value))
    with torch.no_grad():
        for tensor, value in writes:
            value = np.array(value)  # a writable copy: torch.from_numpy warns on read-only arrays
            if value.dtype not in (np.float16, np.float32, np.float64):
                value = value.astype(np.float32)  # bfloat16, which torch.from_numpy cannot read
            tensor.copy_(torch.from_numpy(value))
    return module


def final_state_to_torch(final_carry: Any) -> Any:
    """A layer's final carry as PyTorch's ``h_n`` (RNN, GRU) or ``(h_n, c_n)`` (LSTM).

    With ``proj_size=P`` the rows of ``h_n`` are ``[P]`` and those of ``c_n`` ``[H]``, as in PyTorch.

    Rows are ordered as in PyTorch: layer 0 forward, layer 0 backward, layer 1 forward,
    ... (``h_n[2 * k + d]`` for layer ``k``, direction ``d``). For one example each is
    ``[num_layers * num_directions, H]``; for a carry batched with ``jax.vmap`` each is
    ``[num_layers * num_directions, B, H]``, PyTorch's own batched layout (``h_n`` does
    not depend on ``batch_first``). Also takes one cell's carry (giving ``[1, H]``).

    Args:
      final_carry: the ``final_carry`` of a layer from :func:`from_torch`.

    Returns:
      ``h_n``, or ``(h_n, c_n)`` for an LSTM, as JAX arrays
      (``torch.from_numpy(np.array(h_n))`` makes a tensor).

    Example:
      >>> import jax.numpy as jnp, numpy as np, torch, recurrax
      >>> module = torch.nn.GRU(3, 4, num_layers=2, bidirectional=True)
      >>> layer, params = recurrax.from_torch(module)
      >>> xs = jnp.asarray(np.random.default_rng(0).normal(size=(5, 3)), jnp.float32)
      >>> h_n = recurrax.final_state_to_torch(layer.apply(params, xs)[0])
      >>> with torch.no_grad():
      ...     _, expected = module(torch.from_numpy(np.array(xs)))
      >>> h_n.shape, bool(np.allclose(h_n, expected.numpy(), atol=1e-5))
      ((4, 4), True)
    """
    # Deep returns a plain tuple; cell carries and Bidirectional.Carry are NamedTuples.
    layers = final_carry if type(final_carry) is tuple else (final_carry,)
    states = [s for layer in layers for s in (layer if isinstance(layer, Bidirectional.Carry) else (layer,))]
    if isinstance(states[0], LSTMCarry):
        return jnp.stack([s.h for s in states]), jnp.stack([s.c for s in states])
    return jnp.stack(states)


# -- flax (linen and nnx) -----------------------------------------------------------------

# Per cell class: the recurrax kind and each side's Dense modules as (name, has_bias),
# one per gate or one fused [*, k*H] module. linen's LSTMCell and OptimizedLSTMCell share
# their parameter tree.
_LSTM_GATES = (("ii", False), ("if", False), ("ig", False), ("io", False))
_LSTM_H = (("hi", True), ("hf", True), ("hg", True), ("ho", True))
_FLAX_LAYOUTS = {
    ("linen", "LSTMCell"): ("lstm", _LSTM_GATES, _LSTM_H),
    ("linen", "OptimizedLSTMCell"): ("lstm", _LSTM_GATES, _LSTM_H),
    ("linen", "GRUCell"): (
        "gru",
        (("ir", True), ("iz", True), ("in", True)),
        (("hr", False), ("hz", False), ("hn", True)),
    ),
    ("linen", "SimpleCell"): ("rnn", (("i", True),), (("h", False),)),
    ("nnx", "LSTMCell"): ("lstm", (("ii", False), ("if_", False), ("ig", False), ("io", False)), _LSTM_H),
    ("nnx", "OptimizedLSTMCell"): ("lstm", (("dense_i", False),), (("dense_h", True),)),
    ("nnx", "GRUCell"): ("gru", (("dense_i", True),), (("dense_h", False),)),
    ("nnx", "SimpleCell"): ("rnn", (("dense_i", True),), (("dense_h", False),)),
}


def _flax_layout(module: Any, caller: str):
    _require("flax", caller)
    apis = {"linen": importlib.import_module("flax.linen"), "nnx": importlib.import_module("flax.nnx")}
    for (api, name), layout in _FLAX_LAYOUTS.items():
        if isinstance(module, getattr(apis[api], name)):
            H = module.features if api == "linen" else module.hidden_features
            return api, f"flax.{api}.{name}", layout, H, apis[api]
    t = type(module)
    raise TypeError(
        f"{caller} supports flax.linen and flax.nnx LSTMCell, OptimizedLSTMCell, GRUCell and "
        f"SimpleCell; got {t.__module__}.{t.__qualname__}."
    )


def _read_side(tree: Any, entries: tuple, width: int, dtype: Any, target: str):
    try:
        kernel = np.concatenate([_np(tree[n]["kernel"], dtype) for n, _ in entries], axis=1)
        if not any(has_bias for _, has_bias in entries):
            return kernel, None
        block = width // len(entries)
        biases = [_np(tree[n]["bias"], dtype) if has_bias else np.zeros(block, kernel.dtype) for n, has_bias in entries]
    except (KeyError, TypeError) as e:
        raise ValueError(
            f"these variables do not look like {target}'s: missing {e}. Pass what "
            f"module.init(key, carry, x) returns (or its 'params' entry)."
        ) from e
    return kernel, np.concatenate(biases)


def _write_side(kernel: np.ndarray, bias: np.ndarray, entries: tuple, target: str) -> dict:
    n = len(entries)
    out = {}
    for (name, has_bias), k, b in zip(entries, np.split(kernel, n, axis=1), np.split(bias, n)):
        out[name] = {"kernel": jnp.asarray(k)}
        if has_bias:
            out[name]["bias"] = jnp.asarray(b)
        elif np.any(b != 0):  # only flax.nnx.GRUCell's missing b_hn can get here
            raise ValueError(
                f"{target} has no bias in its '{name}' Dense, but these params need one there "
                f"(a nonzero GRU b_hn). Set b_hn to zeros or use flax.linen.GRUCell."
            )
    return out


def from_flax(module: Any, variables: Any = None, *, dtype: Any = None) -> tuple[Cell, Params]:
    """Convert a flax ``LSTMCell``, ``OptimizedLSTMCell``, ``GRUCell`` or ``SimpleCell``.

    Works for both flax APIs: a linen cell with its ``variables`` (what
    ``module.init(key, carry, x)`` returns, or its ``"params"`` entry), or an nnx cell
    (which holds its own parameters; leave ``variables`` out). The cell's ``gate_fn``,
    ``activation_fn`` and ``dtype`` carry over. A flax GRUCell becomes
    ``GRU(H, reset_after=True)`` with the update-gate block negated; flax's LSTM carry is
    ``(c, h)`` while recurrax's is ``LSTMCarry(h, c)`` (see the module docstring).

    Args:
      module: the flax cell (``flax.linen`` or ``flax.nnx``).
      variables: the linen cell's variables; ``None`` for an nnx cell.
      dtype: the dtype of the returned params; ``None`` keeps flax's.

    Returns:
      ``(cell, params)``: a :class:`~recurrax.Cell` (``rnn``, ``lstm`` or
      ``GRU(reset_after=True)``) and its params, ``U`` ``[I, k*H]``, ``W`` ``[H, k*H]``.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn, recurrax
      >>> module = nn.LSTMCell(features=4)
      >>> c_h = module.initialize_carry(jax.random.key(0), (3,))
      >>> variables = module.init(jax.random.key(1), c_h, jnp.ones(3))
      >>> cell, params = recurrax.from_flax(module, variables)
      >>> (c, h), y = module.apply(variables, c_h, jnp.ones(3))
      >>> carry, y2 = cell.apply(params, recurrax.LSTMCarry(h=c_h[1], c=c_h[0]), jnp.ones(3))
      >>> params.U.shape, bool(jnp.allclose(y, y2, atol=1e-6)), bool(jnp.allclose(c, carry.c, atol=1e-6))
      ((3, 16), True, True)
    """
    api, target, (kind, x_side, h_side), H, lib = _flax_layout(module, "from_flax")
    if api == "nnx":
        if variables is not None:
            raise ValueError(f"{target} holds its own parameters: call from_flax(module) without variables.")
        tree = lib.to_pure_dict(lib.state(module, lib.Param))
    else:
        if variables is None:
            raise ValueError(f"{target} holds no parameters: pass from_flax(module, module.init(key, carry, x)).")
        tree = variables["params"] if "params" in variables else variables
    width = _GATES[kind] * H
    U, b_x = _read_side(tree, x_side, width, dtype, target)
    W, b_h = _read_side(tree, h_side, width, dtype, target)
    if getattr(module, "residual", False):
        W = W + np.eye(H, dtype=W.dtype)  # tanh(x U + b + h W + h) = tanh(x U + b + h (W + I))
    params = _to_recurrax(kind, _Raw(U, W, b_x, b_h))
    activations = {"activation": module.activation_fn, "gate_activation": getattr(module, "gate_fn", None)}
    return _make_cell(kind, H, params, dtype=module.dtype, **activations), params


def to_flax(params: Params, module: Any) -> Any:
    """Recurrax params as a flax cell's parameters: the inverse of :func:`from_flax`.

    For a linen cell, returns the variables ``{"params": ...}`` for ``module.apply``; for
    an nnx cell, writes the parameters into ``module`` in place and returns it. Either way
    ``from_flax`` of the result gives back ``params`` bitwise (except for
    ``SimpleCell(residual=True)``, which subtracts the identity from ``W``). flax cells
    always have biases, so ``b=None`` is written as zeros; ``flax.nnx.GRUCell`` has no
    ``b_hn``, so it must be zero.

    Args:
      params: recurrax params of the matching kind (``LSTM``, ``GRU(reset_after=True)``,
        ``rnn``) with ``hidden_size`` equal to the cell's.
      module: the flax cell (``flax.linen`` or ``flax.nnx``).

    Returns:
      linen: the variables dict. nnx: ``module``, updated.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn, recurrax
      >>> params = recurrax.GRU(4, reset_after=True).init(jax.random.key(0), 3)
      >>> variables = recurrax.to_flax(params, nn.GRUCell(features=4))
      >>> sorted(variables["params"]), variables["params"]["hn"]["bias"].shape
      (['hn', 'hr', 'hz', 'in', 'ir', 'iz'], (4,))
    """
    api, target, (kind, x_side, h_side), H, lib = _flax_layout(module, "to_flax")
    U, W, b_x, b_h, _ = _from_recurrax(kind, params, H, target, bias_on_h=not any(b for _, b in x_side))
    if b_x is None:
        b_x = b_h = np.zeros(U.shape[1], U.dtype)
    if getattr(module, "residual", False):
        W = W - np.eye(H, dtype=W.dtype)
    tree = {**_write_side(U, b_x, x_side, target), **_write_side(W, b_h, h_side, target)}
    if api == "linen":
        return {"params": tree}
    state = lib.state(module, lib.Param)
    lib.replace_by_pure_dict(state, tree)
    lib.update(module, state)
    return module


# -- equinox ------------------------------------------------------------------------------


def _equinox_kind(cell: Any, caller: str) -> str:
    nn = _require("equinox", caller).nn
    if isinstance(cell, nn.LSTMCell):
        return "lstm"
    if isinstance(cell, nn.GRUCell):
        return "gru"
    t = type(cell)
    raise TypeError(
        f"{caller} supports equinox.nn.LSTMCell and equinox.nn.GRUCell; got {t.__module__}.{t.__qualname__}."
    )


def from_equinox(cell: Any, *, dtype: Any = None) -> tuple[Cell, Params]:
    """Convert an ``equinox.nn.LSTMCell`` or ``equinox.nn.GRUCell`` to recurrax.

    equinox's layout is PyTorch's (``weight_ih`` ``[k*H, I]``, gates ``(i, f, g, o)`` and
    ``(r, z, n)``, reset-after GRU with its ``bias_n`` as ``b_hn``, update gate ``1 - z``);
    its LSTM state ``(h, c)`` is :class:`~recurrax.LSTMCarry`'s order.

    Args:
      cell: the equinox cell.
      dtype: the dtype of the returned params; ``None`` keeps equinox's.

    Returns:
      ``(cell, params)``: ``LSTM(H)`` or ``GRU(H, reset_after=True)`` and its params
      (``b=None`` for ``use_bias=False``).

    Example:
      >>> import jax, jax.numpy as jnp, equinox as eqx, recurrax
      >>> module = eqx.nn.GRUCell(3, 4, key=jax.random.key(0))
      >>> cell, params = recurrax.from_equinox(module)
      >>> h, y = cell.apply(params, jnp.zeros(4), jnp.ones(3))
      >>> bool(jnp.allclose(y, module(jnp.ones(3), jnp.zeros(4)), atol=1e-6))
      True
    """
    kind = _equinox_kind(cell, "from_equinox")
    b_n = _np(getattr(cell, "bias_n", None), dtype)
    b_h = None if b_n is None else np.concatenate([np.zeros(2 * cell.hidden_size, b_n.dtype), b_n])
    raw = _Raw(_np(cell.weight_ih, dtype).T, _np(cell.weight_hh, dtype).T, _np(cell.bias, dtype), b_h)
    params = _to_recurrax(kind, raw)
    return _make_cell(kind, cell.hidden_size, params), params


def to_equinox(params: Params, cell: Any) -> Any:
    """A copy of an equinox cell holding recurrax ``params``: the inverse of :func:`from_equinox`.

    equinox modules are immutable, so this returns a new cell (``cell`` is unchanged);
    ``from_equinox`` of it gives back ``params`` bitwise.

    Args:
      params: ``CellParams`` for an ``LSTMCell``, ``GRUResetAfterParams`` for a
        ``GRUCell``; ``b=None`` exactly when the cell has ``use_bias=False``.
      cell: the equinox cell to copy; its sizes must match.

    Returns:
      The new equinox cell.

    Example:
      >>> import jax, equinox as eqx, recurrax
      >>> params = recurrax.LSTM(4).init(jax.random.key(0), 3)
      >>> module = recurrax.to_equinox(params, eqx.nn.LSTMCell(3, 4, key=jax.random.key(1)))
      >>> bool((module.weight_ih == params.U.T).all())
      True
    """
    eqx = _require("equinox", "to_equinox")
    kind = _equinox_kind(cell, "to_equinox")
    target = f"equinox.nn.{type(cell).__name__}"
    U, W, b_x, b_h, _ = _from_recurrax(kind, params, cell.hidden_size, target)
    if (b_x is not None) != cell.use_bias:
        raise ValueError(
            f"params have {'b=None' if b_x is None else 'a bias b'}, but {target} has use_bias={cell.use_bias}."
        )
    if U.shape[0] != cell.input_size:
        raise ValueError(f"{target} has input_size={cell.input_size}; params.U is {U.shape}.")
    names, values = ["weight_ih", "weight_hh"], [U.T, W.T]
    if b_x is not None:
        names.append("bias")
        values.append(b_x)
        if kind == "gru":
            names.append("bias_n")
            values.append(b_h[2 * cell.hidden_size :])
    return eqx.tree_at(lambda c: [getattr(c, n) for n in names], cell, [jnp.asarray(v) for v in values])
