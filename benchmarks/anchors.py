"""The implementations the benchmark times: recurrax and every anchor, behind one interface.

Each ``build_<impl>(cell, cfg, device)`` returns a :class:`Bench` (a forward and a
forward+backward callable on ready inputs, and whether it is JAX or torch) or raises
:class:`Missing` with the reason (library absent, cell not offered, no GPU...). All of
them compute the same thing: a one-layer recurrence over ``[B, T, I]`` inputs, every
output kept; the loss for the backward pass is ``sum(ys) / (B*T)`` and gradients are
taken with respect to the parameters AND the inputs (as in training a stacked model).

Cells: ``rnn`` (tanh), ``lstm``, ``gru`` (the lecture's: reset before the matmul; haiku's
form), ``gru_ra`` (reset after: cuDNN, PyTorch, flax, equinox).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable


class Missing(Exception):
    """This implementation cannot run this configuration (the message says why)."""


@dataclasses.dataclass(frozen=True)
class Config:
    B: int
    T: int
    I: int
    H: int
    dtype: str = "float32"


@dataclasses.dataclass
class Bench:
    """Either ``fwd``/``fwd_bwd`` callables (torch) or jitted JAX functions and their ``args``."""

    fwd: Callable
    fwd_bwd: Callable
    kind: str  # "jax": jitted functions of ``args``; "torch": argument-free callables
    args: tuple = ()


def _jax_inputs(cfg, seed=0):
    import jax

    return jax.random.normal(jax.random.key(seed), (cfg.B, cfg.T, cfg.I)).astype(cfg.dtype)


def _jax_bench(apply_batch, params, xs) -> Bench:
    """``apply_batch(params, xs [B, T, I]) -> ys [B, T, H]`` into a jitted fwd and fwd+bwd."""
    import jax
    import jax.numpy as jnp

    def loss(p, x):
        ys = apply_batch(p, x)
        return jnp.sum(ys.astype(jnp.float32)) / (ys.shape[0] * ys.shape[1])

    return Bench(jax.jit(apply_batch), jax.jit(jax.value_and_grad(loss, argnums=(0, 1))), "jax", (params, xs))


def make_cell(module, cell, H):
    """The benchmark's ``cell`` (``rnn``, ``lstm``, ``gru``, ``gru_ra``) of width ``H`` from ``module``
    (this recurrax or a ``--baseline`` revision), by class: ``module.LSTM(H)`` ... Revisions from
    before the classes (e.g. 7cef51f, lowercase factories only) are :class:`Missing`."""
    if not hasattr(module, "LSTM"):
        raise Missing("this recurrax has no cell classes (recurrax.LSTM ...): a revision older than they are")
    return {"rnn": module.RNN, "lstm": module.LSTM, "gru": module.GRU,
            "gru_ra": lambda H: module.GRU(H, reset_after=True)}[cell](H)


def build_recurrax(cell, cfg, device, module=None, form="batch", **scan_options):
    """recurrax on ``[B, T, I]`` inputs: the time-major batch form of ``scan`` (``form="batch"``,
    transposing in and out) or ``jax.vmap`` over the one-example form (``"vmap"``).
    ``module`` is another copy of the package (``--baseline``), else ``import recurrax``."""
    import jax
    import jax.numpy as jnp

    if module is None:
        import recurrax as module

    c = make_cell(module, cell, cfg.H)
    params = jax.tree.map(lambda a: a.astype(cfg.dtype), c.init(jax.random.key(1), cfg.I))
    if form == "vmap":
        run = jax.vmap(lambda p, x: module.scan(c, p, x, **scan_options)[1], in_axes=(None, 0))
    else:
        run = lambda p, x: jnp.swapaxes(module.scan(c, p, jnp.swapaxes(x, 0, 1), **scan_options)[1], 0, 1)  # noqa: E731
    return _jax_bench(run, params, _jax_inputs(cfg))


def build_recurrax_cudnn(cell, cfg, device):
    """recurrax's LSTM layer with ``impl="cudnn"`` (``jax.experimental.rnn``; GPU, float32)."""
    import jax
    import jax.numpy as jnp

    import recurrax

    if cell != "lstm" or device != "gpu" or cfg.dtype != "float32":
        raise Missing('impl="cudnn" runs the float32 LSTM on a GPU only')
    layer = recurrax.Unidirectional(recurrax.LSTM(cfg.H), impl="cudnn")
    params = layer.init(jax.random.key(1), cfg.I)
    run = lambda p, x: jnp.swapaxes(layer.apply(p, jnp.swapaxes(x, 0, 1))[1], 0, 1)  # noqa: E731
    return _jax_bench(run, params, _jax_inputs(cfg))


def build_limit(cell, cfg, device, one_product=False):
    """The floor of a recurrence's matrix products on this machine: a bare ``lax.scan`` of
    the cell's products plus a tanh, nothing else (no gates, bias, masking or carry logic).

    ``k`` blocks of width ``H`` (rnn 1, lstm 4, gru and gru_ra 3). ``one_product=False``
    (the ``limit`` row, as ``projection="before"``): ``x @ U`` for the whole sequence up
    front, one ``[B*T, I] @ [I, k*H]`` product, then per step ``xu_t + h @ W`` with ``h @ W``
    ``[B, H] @ [H, k*H]``. ``one_product=True`` (``limit (one product)``, as the cell's
    one-step ``apply``): per step ``[x_t, h] @ [U; W]``, ``[B, I+H] @ [I+H, k*H]``, the
    weights concatenated once before the loop. The reset-before GRU (``gru``) needs its
    reset gate before its candidate's product, so it has two products per step in both
    rows: the gates' (``2H`` columns) and then the candidate's on ``r * h`` (``H`` columns;
    ``[x_t, r*h] @ [U_n; W_n]`` in the one-product row). The reset-after GRU's reset gate
    multiplies ``h @ W_n`` alone, so its one product keeps that block apart:
    ``[x_t, h] @ [[U_rz, U_n, 0], [W_rz, 0, W_n]]`` (``4H`` columns).

    Every column of every product is read (a tanh of the whole of it, summed into the next
    ``h``), so XLA cannot compute only part of it.
    """
    import jax
    import jax.numpy as jnp
    from jax import lax

    H, k = cfg.H, {"rnn": 1, "lstm": 4, "gru": 3, "gru_ra": 3}[cell]
    ku, kw = jax.random.split(jax.random.key(1))
    params = ((jax.random.normal(ku, (cfg.I, k * H)) / cfg.I**0.5).astype(cfg.dtype),
              (jax.random.normal(kw, (H, k * H)) / H**0.5).astype(cfg.dtype))

    def mix(a, blocks):  # read every column: the mean of the tanh's blocks
        a = jnp.tanh(a)
        return a, a.reshape(*a.shape[:-1], blocks, H).sum(-2) / blocks

    def run(params, x):  # x [B, T, I]
        U, W = params
        xs = jnp.swapaxes(x, 0, 1)  # [T, B, I]
        h0 = jnp.zeros((x.shape[0], H), cfg.dtype)
        if not one_product:
            def step(h, xu):
                if cell != "gru":
                    return (mix(xu + h @ W, k)[1],) * 2
                a, _ = mix(xu[..., :2 * H] + h @ W[:, :2 * H], 2)
                n = jnp.tanh(xu[..., 2 * H:] + (a[..., :H] * h) @ W[:, 2 * H:])  # the candidate's product
                return ((a[..., H:] + n) / 2,) * 2

            return jnp.swapaxes(lax.scan(step, h0, xs @ U)[1], 0, 1)  # x @ U: one product, up front
        if cell == "gru":
            UW = (jnp.concatenate([U[:, :2 * H], W[:, :2 * H]]), jnp.concatenate([U[:, 2 * H:], W[:, 2 * H:]]))
        elif cell == "gru_ra":
            zeros = lambda rows: jnp.zeros((rows, H), U.dtype)  # noqa: E731
            UW = jnp.concatenate([jnp.concatenate([U, zeros(cfg.I)], 1),  # [U_rz, U_n, 0]
                                  jnp.concatenate([W[:, :2 * H], zeros(H), W[:, 2 * H:]], 1)])  # [W_rz, 0, W_n]
        else:
            UW = jnp.concatenate([U, W])

        def step(h, x_t):
            if cell == "gru":
                a, _ = mix(jnp.concatenate([x_t, h], -1) @ UW[0], 2)
                n = jnp.tanh(jnp.concatenate([x_t, a[..., :H] * h], -1) @ UW[1])  # the candidate's product
                return ((a[..., H:] + n) / 2,) * 2
            return (mix(jnp.concatenate([x_t, h], -1) @ UW, k + (cell == "gru_ra"))[1],) * 2

        return jnp.swapaxes(lax.scan(step, h0, xs)[1], 0, 1)

    return _jax_bench(run, params, _jax_inputs(cfg))


def build_flax(cell, cfg, device, optimized=False):
    try:
        import flax.linen as nn
    except ImportError as e:
        raise Missing("flax not installed") from e
    import jax

    if optimized and cell != "lstm":
        raise Missing("OptimizedLSTMCell is an LSTM")
    cls = {"rnn": nn.SimpleCell, "lstm": nn.OptimizedLSTMCell if optimized else nn.LSTMCell, "gru_ra": nn.GRUCell}
    if cell not in cls:
        raise Missing("flax has no reset-before GRU")
    model = nn.RNN(cls[cell](cfg.H, dtype=cfg.dtype, param_dtype=cfg.dtype))
    xs = _jax_inputs(cfg)
    variables = model.init(jax.random.key(1), xs)
    return _jax_bench(lambda v, x: model.apply(v, x), variables, xs)


def build_equinox(cell, cfg, device):
    try:
        import equinox as eqx
    except ImportError as e:
        raise Missing("equinox not installed") from e
    import jax
    from jax import lax

    cls = {"lstm": eqx.nn.LSTMCell, "gru_ra": eqx.nn.GRUCell}
    if cell not in cls:
        raise Missing("equinox offers LSTMCell and GRUCell (reset after) only")
    module = cls[cell](cfg.I, cfg.H, key=jax.random.key(1), dtype=cfg.dtype)
    params, static = eqx.partition(module, eqx.is_array)

    def one(p, x):
        m = eqx.combine(p, static)
        h0 = jax.numpy.zeros(cfg.H, cfg.dtype)
        carry = (h0, h0) if cell == "lstm" else h0

        def step(c, xt):
            c = m(xt, c)
            return c, (c[0] if cell == "lstm" else c)

        return lax.scan(step, carry, x)[1]

    return _jax_bench(jax.vmap(one, in_axes=(None, 0)), params, _jax_inputs(cfg))


def build_haiku(cell, cfg, device):
    try:
        import haiku as hk
    except ImportError as e:
        raise Missing("dm-haiku not installed") from e
    import jax
    import jax.numpy as jnp

    cores = {"rnn": hk.VanillaRNN, "lstm": hk.LSTM, "gru": hk.GRU}
    if cell not in cores:
        raise Missing("haiku's GRU resets before the matmul (the lecture's form), not after")

    def f(x):  # x [B, T, I]
        core = cores[cell](cfg.H)
        ys, _ = hk.dynamic_unroll(core, jnp.swapaxes(x, 0, 1), core.initial_state(x.shape[0]))
        return jnp.swapaxes(ys, 0, 1)

    t = hk.without_apply_rng(hk.transform(f))
    xs = _jax_inputs(cfg)
    params = jax.tree.map(lambda a: a.astype(cfg.dtype), t.init(jax.random.key(1), xs))
    return _jax_bench(t.apply, params, xs)


def build_jax_experimental(cell, cfg, device):
    """``jax.experimental.rnn.lstm``: cuDNN's LSTM through JAX (GPU only)."""
    import jax
    import jax.numpy as jnp

    if cell != "lstm":
        raise Missing("jax.experimental.rnn offers the LSTM only")
    if device != "gpu":
        raise Missing("jax.experimental.rnn.lstm needs cuDNN (GPU)")
    from jax.experimental import rnn

    xs = _jax_inputs(cfg)
    weights = rnn.init_lstm_weight(jax.random.key(1), cfg.I, cfg.H, 1, False).astype(cfg.dtype)
    lengths = jnp.full((cfg.B,), cfg.T, jnp.int32)
    h0 = jnp.zeros((1, cfg.B, cfg.H), cfg.dtype)

    def apply(w, x):
        return rnn.lstm(x, h0, h0, w, lengths, input_size=cfg.I, hidden_size=cfg.H, num_layers=1,
                        dropout=0.0, bidirectional=False)[0]

    return _jax_bench(apply, weights, xs)


def build_torch(cell, cfg, device):
    try:
        import torch
    except ImportError as e:
        raise Missing("torch not installed") from e
    cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru_ra": torch.nn.GRU}
    if cell not in cls:
        raise Missing("torch has no reset-before GRU")
    if device == "gpu" and not torch.cuda.is_available():
        raise Missing("torch has no CUDA here")
    dev = "cuda" if device == "gpu" else "cpu"
    dtype = getattr(torch, cfg.dtype)
    torch.manual_seed(0)
    module = cls[cell](cfg.I, cfg.H, batch_first=True).to(dev, dtype)
    xs = torch.randn(cfg.B, cfg.T, cfg.I, device=dev, dtype=dtype, requires_grad=True)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def fwd():
        with torch.no_grad():
            out = module(xs)[0]
        sync()
        return out

    def fwd_bwd():
        module.zero_grad(set_to_none=True)
        xs.grad = None
        ys = module(xs)[0]
        (ys.float().sum() / (cfg.B * cfg.T)).backward()
        sync()

    try:
        fwd_bwd()
    except RuntimeError as e:  # e.g. a dtype the CPU kernels do not implement
        raise Missing(f"torch failed: {str(e).splitlines()[0][:80]}") from e
    return Bench(fwd, fwd_bwd, "torch")


IMPLEMENTATIONS = {
    "recurrax": build_recurrax,
    "recurrax (vmap)": lambda c, cfg, d: build_recurrax(c, cfg, d, form="vmap"),
    "recurrax (projection=before)": lambda c, cfg, d: build_recurrax(c, cfg, d, projection="before"),
    "recurrax (projection=in_loop)": lambda c, cfg, d: build_recurrax(c, cfg, d, projection="in_loop"),
    "recurrax (backward=manual)": lambda c, cfg, d: build_recurrax(c, cfg, d, backward="manual"),
    "recurrax (impl=cudnn)": build_recurrax_cudnn,
    "limit": build_limit,
    "limit (one product)": lambda c, cfg, d: build_limit(c, cfg, d, one_product=True),
    "flax nn.RNN": build_flax,
    "flax nn.RNN(Optimized)": lambda c, cfg, d: build_flax(c, cfg, d, optimized=True),
    "equinox": build_equinox,
    "haiku": build_haiku,
    "torch": build_torch,
    "jax.experimental.rnn": build_jax_experimental,
}
ANCHOR_NOTES = {
    "recurrax": "recurrax.scan, time-major batch form [T, B, I] (transposed in and out)",
    "recurrax (vmap)": "jax.vmap over recurrax.scan's one-example form",
    "recurrax (projection=before)": "the batch form with the input projection of all steps before the loop",
    "recurrax (projection=in_loop)": "the batch form with each step's input projection inside the loop",
    "recurrax (backward=manual)": "the batch form with the hand-derived backward pass (custom_vjp)",
    "recurrax (impl=cudnn)": 'recurrax.Unidirectional(LSTM, impl="cudnn"): cuDNN through jax.experimental.rnn (GPU)',
    "limit": "the floor of the cell's products, as projection='before': x @ U for all steps up front (one "
             "[B*T, I] @ [I, k*H] product), then a bare lax.scan of xu_t + h @ W ([B, H] @ [H, k*H]) and a tanh "
             "(k = 1 rnn, 4 lstm, 3 gru and gru_ra); the reset-before gru: h @ W_rz, then its candidate's "
             "(r * h) @ W_n, a second product per step",
    "limit (one product)": "the same floor with one product per step, as the cell's apply: [x_t, h] @ [U; W] "
                           "([B, I+H] @ [I+H, k*H], weights concatenated before the loop) and a tanh; the "
                           "reset-before gru: [x_t, h] @ [U_rz; W_rz], then [x_t, r * h] @ [U_n; W_n]; the "
                           "reset-after gru_ra, whose reset multiplies h @ W_n alone: [x_t, h] @ [[U_rz, U_n, 0], "
                           "[W_rz, 0, W_n]] (4H columns)",
    "flax nn.RNN": "flax.linen.RNN over LSTMCell / GRUCell / SimpleCell",
    "flax nn.RNN(Optimized)": "flax.linen.RNN over OptimizedLSTMCell",
    "equinox": "equinox LSTMCell / GRUCell + lax.scan + vmap",
    "haiku": "haiku LSTM / GRU / VanillaRNN + dynamic_unroll",
    "torch": "torch.nn.LSTM / GRU / RNN (oneDNN on CPU, cuDNN on GPU)",
    "jax.experimental.rnn": "jax.experimental.rnn.lstm (cuDNN, GPU only)",
}
