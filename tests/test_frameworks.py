"""recurrax.nnx and recurrax.equinox: the same values and gradients as the functional path,
options forwarded, clear errors, and the docs pages' classifiers train.

Each framework's tests skip when it is not installed; tests/test_layout.py checks what
happens then.
"""

import pathlib
import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrax
from tests.helpers import leaves_close

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
T, I, H = 6, 3, 4
LENGTH = jnp.array([0, 3, 6, 2])  # per example, 0 and T included


def nnx_framework() -> types.SimpleNamespace:
    nnx = pytest.importorskip("flax.nnx")
    import recurrax.nnx

    def values(tree):
        return jax.tree.map(lambda v: v.get_value(), tree, is_leaf=lambda v: isinstance(v, nnx.Variable))

    def grad(loss, model):
        # nnx.grad returns an nnx.State; written into a copy of the model it reads back as params.
        copy = nnx.clone(model)
        nnx.update(copy, nnx.grad(loss)(model))
        return values(copy.params)

    return types.SimpleNamespace(
        params=lambda model: values(model.params),
        grad=grad,
        page=DOCS / "flax.md",
        Recurrent=recurrax.nnx.Recurrent,
        init=lambda: {"rngs": nnx.Rngs(0)},
        trainable=lambda model: nnx.state(model, nnx.Param),
        jit=nnx.jit,
    )


def equinox_framework() -> types.SimpleNamespace:
    eqx = pytest.importorskip("equinox")
    import recurrax.equinox

    return types.SimpleNamespace(
        params=lambda model: model.params,
        grad=lambda loss, model: eqx.filter_grad(loss)(model).params,
        page=DOCS / "equinox.md",
        Recurrent=recurrax.equinox.Recurrent,
        init=lambda: {"key": jax.random.key(0)},
        trainable=lambda model: eqx.filter(model, eqx.is_array),
        jit=eqx.filter_jit,
    )


@pytest.fixture(params=["nnx", "equinox"])
def fw(request):
    return {"nnx": nnx_framework, "equinox": equinox_framework}[request.param]()


def make(fw, wrapped, **scan_options):
    return fw.Recurrent(wrapped, I, **fw.init(), **scan_options)


WRAPPED = {"lstm": lambda: recurrax.LSTM(H), "bidirectional": lambda: recurrax.Bidirectional(recurrax.LSTM(H))}


def functional(wrapped, params, xs, carry=None, length=None, resets=None, key=None, **options):
    if hasattr(wrapped, "initial_carry"):
        return recurrax.scan(wrapped, params, xs, carry, length=length, resets=resets, key=key, **options)
    return wrapped.apply(params, xs, length=length, carry=carry, resets=resets, key=key)


def loss_of(out):
    # every output and carry leaf reaches the loss, each through a nonlinearity
    return sum(jnp.sum(jnp.sin(3.0 * leaf)) for leaf in jax.tree.leaves(out))


def padded_batch():
    xs = jax.random.normal(jax.random.key(1), (T, LENGTH.shape[0], I))
    # NaN padding must reach neither path's values nor gradients
    return jnp.where(jnp.arange(T)[:, None, None] < LENGTH[None, :, None], xs, jnp.nan)


@pytest.mark.parametrize("name", sorted(WRAPPED))
def test_values_and_gradients_equal_the_functional_path(fw, name):
    wrapped = WRAPPED[name]()
    model, xs = make(fw, wrapped), padded_batch()

    @fw.jit  # one compilation for both paths, values and gradients
    def compare(model):
        params = fw.params(model)
        got = model(xs, length=LENGTH), fw.grad(lambda m: loss_of(m(xs, length=LENGTH)), model)
        want = (functional(wrapped, params, xs, length=LENGTH),
                jax.grad(lambda p: loss_of(functional(wrapped, p, xs, length=LENGTH)))(params))
        return got, want

    got, want = compare(model)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    leaves_close(got, want, atol=1e-6, rtol=1e-6)
    assert all(np.isfinite(g).all() and np.abs(g).max() > 0 for g in jax.tree.leaves(got[1]))


def test_one_example_carry_and_scan_options_are_forwarded(fw):
    cell = WRAPPED["lstm"]()
    model = make(fw, cell, reverse=True, checkpoint="all")
    params = fw.params(model)
    xs = jax.random.normal(jax.random.key(2), (T, I))
    carry = recurrax.LSTMCarry(*jax.random.normal(jax.random.key(3), (2, H)))
    want = functional(cell, params, xs, carry, length=4, reverse=True, checkpoint="all")
    leaves_close(model(xs, carry, length=4), want, atol=1e-6, rtol=1e-6)
    # reverse reached scan: the forward run differs
    assert not np.allclose(functional(cell, params, xs, carry, length=4)[1], want[1])


@pytest.mark.parametrize("name", ["dropout_lstm", "bidirectional_dropout"])
def test_resets_and_key_are_forwarded(fw, name):
    wrapped = {"dropout_lstm": lambda: recurrax.Dropout(recurrax.LSTM(H), rate=0.3, recurrent_rate=0.4),
               "bidirectional_dropout": lambda: recurrax.Bidirectional(
                   recurrax.Zoneout(recurrax.GRU(H), rate=0.3))}[name]()
    model, xs = make(fw, wrapped), padded_batch()
    resets = jnp.zeros((T, LENGTH.shape[0]), bool).at[2, :].set(True).at[4, 1].set(True)
    key = jax.random.key(7)
    params = fw.params(model)
    call = {"length": LENGTH, "resets": resets, "key": key}
    got = model(xs, **call), fw.grad(lambda m: loss_of(m(xs, **call)), model)
    want = (functional(wrapped, params, xs, **call),
            jax.grad(lambda p: loss_of(functional(wrapped, p, xs, **call)))(params))
    leaves_close(got, want, atol=1e-6, rtol=1e-6)
    # each argument reached the scan: without it the outputs differ
    for dropped in ("resets", "key"):
        other = functional(wrapped, params, xs, **{**call, dropped: None})
        assert not np.allclose(other[1], got[0][1]), dropped
    with pytest.raises(TypeError, match="resets change.* from call to call: pass them when calling"):
        make(fw, recurrax.LSTM(H), resets=resets)


@pytest.mark.parametrize("half", [jnp.bfloat16, jnp.float16])
def test_backward_manual_with_half_precision_inputs_and_float32_params(fw, half):
    # It used to raise JAX's "scan body function carry input and carry output must have equal
    # types" where backward="autodiff" ran.
    cell = recurrax.GRU(H)
    manual = make(fw, cell, backward="manual")
    auto = fw.Recurrent(cell, params=fw.params(manual))
    xs = jax.random.normal(jax.random.key(5), (T, 2, I)).astype(half)

    def loss(model):
        return sum(jnp.sum(jnp.sin(3.0 * leaf.astype(jnp.float32))) for leaf in jax.tree.leaves(model(xs)))

    with jax.numpy_dtype_promotion("standard"):  # mixed precision needs JAX's standard promotion
        g_manual, g_auto = fw.grad(loss, manual), fw.grad(loss, auto)
    assert jax.tree.map(lambda a: a.dtype, g_manual) == jax.tree.map(lambda a: a.dtype, fw.params(manual))
    scale = max(float(jnp.abs(a).max()) for a in jax.tree.leaves(g_auto))
    leaves_close(g_manual, g_auto, atol=3e-2 * scale, rtol=0)


def test_wrapping_existing_params(fw):
    layer = WRAPPED["bidirectional"]()
    params = layer.init(jax.random.key(4), I)
    model = fw.Recurrent(layer, params=params)
    leaves_close(fw.params(model), params, atol=0)
    assert len(jax.tree.leaves(fw.trainable(model))) == len(jax.tree.leaves(params))


def test_errors_name_the_argument_and_the_fix(fw):
    fix = r"Unidirectional\(cell, reverse=True\)"
    with pytest.raises(ValueError, match=f"reverse are options of recurrax.scan.*{fix}"):
        make(fw, WRAPPED["bidirectional"](), reverse=True)
    with pytest.raises(TypeError, match="unknown scan option.*revers.*takes reverse, unroll"):
        make(fw, recurrax.LSTM(H), revers=True)
    with pytest.raises(TypeError, match="cell_or_layer must be a cell .* or a layer .*got a int"):
        make(fw, 3)
    with pytest.raises(TypeError, match="pass either params or input_size"):
        fw.Recurrent(recurrax.LSTM(H), I, params=recurrax.LSTM(H).init(jax.random.key(0), I), **fw.init())
    with pytest.raises(TypeError, match="input_size and .* are needed"):
        fw.Recurrent(recurrax.LSTM(H), I)
    with pytest.raises(ValueError, match="input_size must be a positive int; got 0"):
        fw.Recurrent(recurrax.LSTM(H), 0, **fw.init())


def test_nnx_rngs_must_be_rngs():
    pytest.importorskip("flax.nnx")
    import recurrax.nnx

    with pytest.raises(TypeError, match=r"rngs must be an nnx.Rngs \(e.g. nnx.Rngs\(0\)\); got a int"):
        recurrax.nnx.Recurrent(recurrax.LSTM(H), I, rngs=0)


def test_an_old_flax_is_refused_on_import(monkeypatch):
    nnx = pytest.importorskip("flax.nnx")
    monkeypatch.delattr(nnx, "data")  # as in flax < 0.12
    source = (pathlib.Path(recurrax.__file__).parent / "nnx.py").read_text()
    with pytest.raises(ImportError, match=r"needs flax >= 0.12.*pip install -U flax"):
        exec(compile(source, "recurrax/nnx.py", "exec"), {"__name__": "recurrax_nnx_probe"})  # noqa: S102


def test_the_docs_page_trains(fw, optax_promotion):
    pytest.importorskip("optax")
    code = re.findall(r"```python\n(.*?)```", fw.page.read_text(), re.S)[0]
    namespace = {"__name__": "docs_page"}
    exec(compile(code, str(fw.page), "exec"), namespace)  # noqa: S102
    losses = namespace["losses"]
    assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0], losses
