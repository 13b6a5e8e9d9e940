"""recurrax._core._interop: parity with torch, flax and equinox, gradients, round trips, errors.

The float64 grids run under ``jax.disable_jit()``: the converters are what is tested here
(jit equals eager is tested elsewhere), and op-by-op execution shares its compiled kernels
across the whole grid, where one ``jax.jit`` per configuration would take most of the CI
budget. The float32 subset runs jitted, so the compiled path is covered too.
"""

import copy
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrax
from recurrax._core._interop import (
    final_state_to_torch,
    from_equinox,
    from_flax,
    from_torch,
    to_equinox,
    to_flax,
    to_torch,
)

torch = pytest.importorskip("torch", reason="torch is an optional test extra (pip install torch==2.13.0)")

T, I, H = 5, 3, 4
P = 2  # proj_size of the projected LSTM
LENGTHS = [3, 5, 1]  # one batch of three examples; unsorted, as pack_padded_sequence(enforce_sorted=False) allows
B = len(LENGTHS)
TORCH_MODULES = {
    "rnn_tanh": lambda **kw: torch.nn.RNN(I, H, nonlinearity="tanh", **kw),
    "rnn_relu": lambda **kw: torch.nn.RNN(I, H, nonlinearity="relu", **kw),
    "lstm": lambda **kw: torch.nn.LSTM(I, H, **kw),
    "lstm_proj": lambda **kw: torch.nn.LSTM(I, H, proj_size=P, **kw),
    "gru": lambda **kw: torch.nn.GRU(I, H, **kw),
}
TORCH_CELLS = {
    "rnn_tanh": lambda **kw: torch.nn.RNNCell(I, H, nonlinearity="tanh", **kw),
    "rnn_relu": lambda **kw: torch.nn.RNNCell(I, H, nonlinearity="relu", **kw),
    "lstm": lambda **kw: torch.nn.LSTMCell(I, H, **kw),
    "gru": lambda **kw: torch.nn.GRUCell(I, H, **kw),
}
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def _out(name):
    """The size of a direction's output (and of ``h_n``'s rows)."""
    return P if name == "lstm_proj" else H


@pytest.fixture
def op_by_op():
    """Run without jit (see the module docstring)."""
    with jax.disable_jit():
        yield


def _module(name, dtype, seed=0, **kw):
    torch.manual_seed(seed)  # the same seed gives the same weights whatever batch_first says
    return TORCH_MODULES[name](**kw).to(dtype)


def _xs(dtype):
    return np.random.default_rng(0).normal(size=(B, T, I)).astype(dtype)


def _torch_forward(module, x, lengths):
    """The module on a batch ``x`` ``[B, T, I]``: output ``[B, T, D*H]`` and its states."""
    bf = module.batch_first
    x = x if bf else x.transpose(0, 1)
    if lengths is not None:
        x = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths), batch_first=bf, enforce_sorted=False)
    out, state = module(x)
    if lengths is not None:
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=bf, total_length=T)
    return (out if bf else out.transpose(0, 1)), (state if isinstance(state, tuple) else (state,))


def _recurrax_forward(layer, params, xs, lengths):
    if lengths is None:
        finals, ys = jax.vmap(lambda x: layer.apply(params, x))(xs)
    else:
        finals, ys = jax.vmap(lambda x, n: layer.apply(params, x, length=n))(xs, jnp.asarray(lengths))
    states = final_state_to_torch(finals)
    return ys, (states if isinstance(states, tuple) else (states,))


def _check_parity(name, dtype, num_layers, bidirectional, bias, forward):
    xs = _xs(np.float64 if dtype == torch.float64 else np.float32)
    layer = None
    for batch_first in (False, True):
        module = _module(
            name, dtype, num_layers=num_layers, bidirectional=bidirectional, bias=bias, batch_first=batch_first
        )
        if layer is None:
            layer, params = from_torch(module)
            assert all(leaf.dtype == xs.dtype for leaf in jax.tree.leaves(params))
            first = params[0].forward if bidirectional else params[0]
            assert (first.b is None) == (not bias) and (getattr(first, "b_hn", None) is None) == (
                not bias or name != "gru"
            )
        else:  # batch_first only concerns how the module is called: same layer, same params
            _bitwise_equal(from_torch(module)[1], params)
        for lengths in (LENGTHS, None):
            with torch.no_grad():
                expected, expected_states = _torch_forward(module, torch.from_numpy(xs), lengths)
            ys, states = forward(layer, params, jnp.asarray(xs), lengths)
            assert ys.shape == (B, T, (1 + bidirectional) * _out(name))
            np.testing.assert_allclose(ys, expected.numpy(), atol=TOL[dtype], rtol=0)
            assert len(states) == len(expected_states)
            for s, e in zip(states, expected_states):
                np.testing.assert_allclose(s, e.numpy(), atol=TOL[dtype], rtol=0)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("name", sorted(TORCH_MODULES))
def test_layer_equals_torch_float64(name, num_layers, bidirectional, bias, x64, op_by_op):
    """The full grid, both batch_first values, packed and unpacked."""
    _check_parity(name, torch.float64, num_layers, bidirectional, bias, _recurrax_forward)


@pytest.mark.parametrize("num_layers,bidirectional,bias", [(2, True, True), (1, False, False)])
@pytest.mark.parametrize("name", sorted(TORCH_MODULES))
def test_layer_equals_torch_float32_jitted(name, num_layers, bidirectional, bias):
    forward = jax.jit(_recurrax_forward, static_argnums=(0, 3))
    _check_parity(
        name,
        torch.float32,
        num_layers,
        bidirectional,
        bias,
        lambda layer, params, xs, lengths: forward(layer, params, xs, None if lengths is None else tuple(lengths)),
    )


@pytest.mark.parametrize("num_layers,bidirectional,bias,lengths,dtype", [
    (2, True, True, LENGTHS, torch.float64),
    (1, False, False, None, torch.float32),
])
@pytest.mark.parametrize("name", sorted(TORCH_MODULES))
def test_gradients_equal_torch(name, num_layers, bidirectional, bias, lengths, dtype):
    """d(loss)/d(inputs) and d(loss)/d(weights), recurrax's mapped through to_torch's layout."""
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    with jax.enable_x64(dtype == torch.float64), jax.disable_jit():
        module = _module(name, dtype, num_layers=num_layers, bidirectional=bidirectional, bias=bias)
        layer, params = from_torch(module)
        rng = np.random.default_rng(1)
        xs = _xs(np_dtype)
        w_out = rng.normal(size=(B, T, (1 + bidirectional) * _out(name))).astype(np_dtype)
        rows = num_layers * (1 + bidirectional)
        w_states = [rng.normal(size=(rows, B, n)).astype(np_dtype) for n in (_out(name), H)]  # h_n, c_n

        x = torch.from_numpy(xs).requires_grad_()
        out, states = _torch_forward(module, x, lengths)
        loss = (out * torch.from_numpy(w_out)).sum() + sum((s * torch.from_numpy(w)).sum()
                                                           for s, w in zip(states, w_states))
        loss.backward()

        def recurrax_loss(params, xs):
            ys, states = _recurrax_forward(layer, params, xs, lengths)
            return (ys * w_out).sum() + sum((s * w).sum() for s, w in zip(states, w_states))

        g_params, g_xs = jax.grad(recurrax_loss, argnums=(0, 1))(params, jnp.asarray(xs))

    tol = TOL[dtype]
    np.testing.assert_allclose(g_xs, x.grad.numpy(), atol=tol, rtol=0)
    mapped = to_torch(g_params, copy.deepcopy(module))
    names = [n for n, _ in module.named_parameters()]
    assert len(names) == num_layers * (1 + bidirectional) * ((4 if bias else 2) + (name == "lstm_proj"))
    for pname, p in module.named_parameters():
        expected = getattr(mapped, pname).detach().numpy()
        if pname.startswith("bias_hh"):
            # b = b_ih + b_hh, so dL/db_hh = dL/db, which to_torch wrote into bias_ih; the
            # GRU's n block of bias_hh is b_hn, whose gradient to_torch did write there.
            b_ih = getattr(mapped, pname.replace("bias_hh", "bias_ih")).detach().numpy()
            expected = np.concatenate([b_ih[: 2 * H], expected[2 * H :]]) if name == "gru" else b_ih
        np.testing.assert_allclose(p.grad.numpy(), expected, atol=tol, rtol=0, err_msg=pname)


def _bitwise_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()  # stricter than np.array_equal: keeps -0.0


def _random_params(init, seed=1):
    """Params for ``init(key, I)``, drawn with NumPy (cheap without jit), each leaf with a -0.0."""
    rng = np.random.default_rng(seed)

    def draw(leaf):
        a = rng.normal(size=leaf.shape).astype(leaf.dtype)
        a[..., 0] = -0.0
        return jnp.asarray(a)

    return jax.tree.map(draw, jax.eval_shape(lambda key: init(key, I), jax.random.key(0)))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("name", sorted(TORCH_MODULES))
def test_recurrax_torch_recurrax_round_trip_is_bitwise(name, bidirectional, bias):
    module = _module(name, torch.float32, num_layers=2, bidirectional=bidirectional, bias=bias)
    layer, _ = from_torch(module)
    params = _random_params(layer.init)
    assert to_torch(params, module) is module
    _bitwise_equal(params, from_torch(module)[1])


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", sorted(TORCH_CELLS))
def test_torch_cells(name, bias, x64, op_by_op):
    torch.manual_seed(0)
    module = TORCH_CELLS[name](bias=bias).double()
    cell, params = from_torch(module)
    assert isinstance(cell, (recurrax.RNN, recurrax.LSTM, recurrax.GRU))
    rng = np.random.default_rng(0)
    xs, h0, c0 = rng.normal(size=(T, I)), rng.normal(size=H), rng.normal(size=H)
    state = (torch.from_numpy(h0), torch.from_numpy(c0)) if name == "lstm" else torch.from_numpy(h0)
    carry = recurrax.LSTMCarry(jnp.asarray(h0), jnp.asarray(c0)) if name == "lstm" else jnp.asarray(h0)
    expected = []
    with torch.no_grad():
        for x in torch.from_numpy(xs):
            state = module(x, state)
            expected.append((state[0] if name == "lstm" else state).numpy())
    final, ys = recurrax.scan(cell, params, jnp.asarray(xs), carry)
    np.testing.assert_allclose(ys, np.stack(expected), atol=1e-10, rtol=0)
    if name == "lstm":
        h_n, c_n = final_state_to_torch(final)
        np.testing.assert_allclose(c_n, state[1].numpy()[None], atol=1e-10, rtol=0)
    else:
        assert final_state_to_torch(final).shape == (1, H)
    # round trip, in float64
    new = _random_params(cell.init)
    _bitwise_equal(new, from_torch(to_torch(new, module))[1])


def test_bfloat16_module_round_trip():
    module = torch.nn.LSTM(I, H, num_layers=2).to(torch.bfloat16)
    layer, params = from_torch(module)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    new = _random_params(layer.init)
    _bitwise_equal(new, from_torch(to_torch(new, module))[1])


def test_dtype_argument_and_dropout(x64, op_by_op):
    module = torch.nn.GRU(I, H, num_layers=2, dropout=0.5).eval()  # dropout: inference semantics
    layer, params = from_torch(module)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    layer64, params64 = from_torch(module, dtype=jnp.float64)
    assert {leaf.dtype for leaf in jax.tree.leaves(params64)} == {jnp.dtype(jnp.float64)}
    xs = _xs(np.float32)[0]
    with torch.no_grad():
        expected, _ = module(torch.from_numpy(xs))
    _, ys = layer64.apply(params64, jnp.asarray(xs, jnp.float64))
    np.testing.assert_allclose(ys, expected.numpy(), atol=1e-5, rtol=0)


# -- flax and equinox ---------------------------------------------------------------------

FLAX_CELLS = [
    (api, name, False)
    for api in ("linen", "nnx")
    for name in ("LSTMCell", "OptimizedLSTMCell", "GRUCell", "SimpleCell")
]
FLAX_CELLS += [(api, "SimpleCell", True) for api in ("linen", "nnx")]  # residual=True


def _flax_cell(api, name, **kw):
    """A flax cell and its step function ``(carry, x) -> (carry, y)``; random biases (flax's are zeros)."""
    bias_init = jax.nn.initializers.normal(1.0)
    if api == "linen":
        nn = pytest.importorskip("flax.linen")
        module = getattr(nn, name)(features=H, bias_init=bias_init, **kw)
        carry = module.initialize_carry(jax.random.key(0), (I,))
        variables = module.init(jax.random.key(1), carry, jnp.ones(I))
        return module, variables, lambda variables, c, x: module.apply(variables, c, x)
    nnx = pytest.importorskip("flax.nnx")
    module = getattr(nnx, name)(I, H, bias_init=bias_init, rngs=nnx.Rngs(0), **kw)
    return module, None, lambda _, c, x: module(c, x)


def _step_by_step(step, carry, xs):
    ys = []
    for x in xs:
        carry, y = step(carry, x)
        ys.append(y)
    return carry, jnp.stack(ys)


def _random_carry(lstm):
    h, c = jax.random.normal(jax.random.key(7), (2, H))
    return (recurrax.LSTMCarry(h, c), (c, h)) if lstm else (h, h)  # flax's LSTM carry is (c, h)


@pytest.mark.parametrize("api,name,residual", FLAX_CELLS)
def test_flax_cells(api, name, residual):
    module, variables, step = _flax_cell(api, name, **({"residual": True} if residual else {}))
    cell, params = from_flax(module, variables)
    xs = jax.random.normal(jax.random.key(2), (T, I))
    lstm = "LSTM" in name
    ours, theirs = _random_carry(lstm)
    final, ys = recurrax.scan(cell, params, xs, ours)
    their_final, expected = _step_by_step(lambda c, x: step(variables, c, x), theirs, xs)
    np.testing.assert_allclose(ys, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(final.c if lstm else final, their_final[0] if lstm else their_final, atol=1e-5, rtol=0)

    # recurrax -> flax -> recurrax
    new = _random_params(cell.init)
    if api == "nnx" and name == "GRUCell":
        new = new._replace(b_hn=jnp.zeros(H))  # nnx's GRUCell has no b_hn
    written = to_flax(new, module)  # linen: the variables; nnx: the module, updated in place
    _, back = from_flax(module, written) if api == "linen" else from_flax(written)
    if residual:  # W - I + I: equal, not bitwise
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=0), new, back)
    else:
        _bitwise_equal(new, back)
    # and flax with the written params computes what recurrax computes with them
    _, ys = recurrax.scan(cell, new, xs, ours)
    _, expected = _step_by_step(lambda c, x: step(written, c, x), theirs, xs)
    np.testing.assert_allclose(ys, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell"])
def test_equinox_cells(name, use_bias):
    eqx = pytest.importorskip("equinox")
    module = getattr(eqx.nn, name)(I, H, use_bias=use_bias, key=jax.random.key(0))
    cell, params = from_equinox(module)
    lstm = name == "LSTMCell"
    xs = jax.random.normal(jax.random.key(2), (T, I))
    ours, _ = _random_carry(lstm)
    theirs = (ours.h, ours.c) if lstm else ours  # equinox's LSTM state is (h, c), like LSTMCarry

    def step(state, x):
        state = module(x, state)
        return state, (state[0] if lstm else state)

    their_final, expected = _step_by_step(step, theirs, xs)
    final, ys = recurrax.scan(cell, params, xs, ours)
    np.testing.assert_allclose(ys, expected, atol=1e-5, rtol=0)
    if lstm:
        np.testing.assert_allclose(final.c, their_final[1], atol=1e-5, rtol=0)
    new = _random_params(cell.init)
    _bitwise_equal(new, from_equinox(to_equinox(new, module))[1])


# -- optional dependencies and errors -----------------------------------------------------


def test_import_recurrax_imports_no_optional_library():
    code = (
        "import sys, recurrax, recurrax._core._interop; "
        "loaded = [m for m in ('torch', 'flax', 'equinox') if m in sys.modules]; "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("library,call", [
    ("torch", lambda: from_torch(object())),
    ("torch", lambda: to_torch((), object())),
    ("flax", lambda: from_flax(object(), {})),
    ("flax", lambda: to_flax((), object())),
    ("equinox", lambda: from_equinox(object())),
    ("equinox", lambda: to_equinox((), object())),
])
def test_missing_library_says_which_extra_to_install(monkeypatch, library, call):
    monkeypatch.setitem(sys.modules, library, None)  # makes `import library` raise ImportError
    with pytest.raises(ImportError, match=rf"needs {library}.*pip install \"recurrax\[anchors\]\""):
        call()


def test_unsupported_modules_name_their_type_and_the_supported_ones():
    with pytest.raises(
        TypeError, match=r"supports torch\.nn\.RNN, torch\.nn\.LSTM.*got torch\.nn\.modules\.linear\.Linear"
    ):
        from_torch(torch.nn.Linear(3, 4))
    with pytest.raises(TypeError, match=r"to_torch supports .*Conv1d"):
        to_torch((), torch.nn.Conv1d(3, 4, 1))
    nn = pytest.importorskip("flax.linen")
    with pytest.raises(TypeError, match=r"LSTMCell, OptimizedLSTMCell, GRUCell and SimpleCell; got .*MGUCell"):
        from_flax(nn.MGUCell(features=4), {})
    eqx = pytest.importorskip("equinox")
    with pytest.raises(TypeError, match=r"equinox\.nn\.LSTMCell and equinox\.nn\.GRUCell; got .*Linear"):
        from_equinox(eqx.nn.Linear(3, 4, key=jax.random.key(0)))


def test_projection_and_variants_must_match_the_module():
    proj = recurrax.LSTM(H, proj_size=P).init(jax.random.key(0), I)
    plain = recurrax.LSTM(H).init(jax.random.key(0), I)
    with pytest.raises(ValueError, match=r"have W_hr .*torch\.nn\.LSTM has no projection.*proj_size=P"):
        to_torch((proj,), torch.nn.LSTM(I, H))
    with pytest.raises(ValueError, match=rf"proj_size={P}\): expected CellParams\(.*W \[{P}, 16\].*W_hr \[{H}, {P}\]"):
        to_torch((plain,), torch.nn.LSTM(I, H, proj_size=P))
    with pytest.raises(ValueError, match=r"have W_hr .*torch\.nn\.LSTMCell has no projection"):
        to_torch(proj, torch.nn.LSTMCell(I, H))
    for variant in (recurrax.LSTM(H, peephole=True), recurrax.LSTM(H, layer_norm=True)):
        with pytest.raises(ValueError, match=r"have (peephole|gain_x, gain_h, gain_c, b_c) .*does not have"):
            to_torch((variant.init(jax.random.key(0), I),), torch.nn.LSTM(I, H))
    ln_gru = recurrax.GRU(H, reset_after=True, layer_norm=True).init(jax.random.key(0), I)
    with pytest.raises(ValueError, match=r"have gain_x, gain_h .*torch\.nn\.GRUCell does not have"):
        to_torch(ln_gru, torch.nn.GRUCell(I, H))
    eqx = pytest.importorskip("equinox")
    with pytest.raises(ValueError, match=r"equinox\.nn\.GRUCell does not have"):
        to_equinox(ln_gru, eqx.nn.GRUCell(I, H, key=jax.random.key(0)))


def test_to_torch_rejects_params_that_do_not_fit():
    gru = torch.nn.GRU(I, H, num_layers=2)
    lecture = recurrax.GRU(H).init(jax.random.key(0), I)
    with pytest.raises(ValueError, match=r"reset-before GRU.*GRU\(H, reset_after=True\)"):
        to_torch((lecture, lecture), gru)
    ra = recurrax.GRU(H, reset_after=True).init(jax.random.key(0), I)
    with pytest.raises(ValueError, match=r"num_layers=2: params must be a tuple of 2"):
        to_torch((ra,), gru)
    with pytest.raises(ValueError, match=r"layer 0 of params must be Bidirectional.Params"):
        to_torch((ra,), torch.nn.GRU(I, H, bidirectional=True))
    with pytest.raises(ValueError, match=r"hidden_size=5"):
        to_torch((ra, ra), torch.nn.GRU(I, 5, num_layers=2))
    with pytest.raises(ValueError, match=r"bias=False"):
        to_torch(ra, torch.nn.GRUCell(I, H, bias=False))
    with pytest.raises(ValueError, match=r"weight_ih is \(12, 7\); the params give \(12, 3\)"):
        to_torch(ra, torch.nn.GRUCell(7, H))
    before = [p.detach().clone() for p in gru.parameters()]
    with pytest.raises(ValueError):  # layer 1 does not fit: nothing is written, not even layer 0
        to_torch((ra, recurrax.GRU(H, reset_after=True).init(jax.random.key(0), 5)), gru)
    assert all(torch.equal(a, b) for a, b in zip(before, gru.parameters()))


def test_flax_errors():
    nn = pytest.importorskip("flax.linen")
    nnx = pytest.importorskip("flax.nnx")
    with pytest.raises(ValueError, match=r"holds no parameters"):
        from_flax(nn.GRUCell(features=H))
    with pytest.raises(ValueError, match=r"missing"):
        from_flax(nn.GRUCell(features=H), {"params": {}})
    gru = nnx.GRUCell(I, H, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"holds its own parameters"):
        from_flax(gru, {})
    params = recurrax.GRU(H, reset_after=True).init(jax.random.key(0), I)
    with pytest.raises(ValueError, match=r"nonzero GRU b_hn"):
        to_flax(params, gru)
    with pytest.raises(ValueError, match=r"do not fit flax\.linen\.LSTMCell"):
        to_flax(params, nn.LSTMCell(features=H))
