"""The cells against independent implementations: torch's cells and a NumPy transcription."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrax

torch = pytest.importorskip("torch", reason="torch is an optional test extra (pip install torch==2.13.0)")

I, H, T = 3, 5, 6


def _torch_cell_params(module, gates):
    """Our CellParams from a torch *Cell: U = W_ih^T, W = W_hh^T, b = b_ih + b_hh."""
    w_ih = module.weight_ih.detach().double().numpy()
    w_hh = module.weight_hh.detach().double().numpy()
    b_ih = module.bias_ih.detach().double().numpy()
    b_hh = module.bias_hh.detach().double().numpy()
    return w_ih.T, w_hh.T, b_ih, b_hh


def _run_torch_cell(module, xs, state):
    outs = []
    with torch.no_grad():
        for x in torch.from_numpy(np.asarray(xs)):
            state = module(x, state)
            outs.append((state[0] if isinstance(state, tuple) else state).numpy().copy())
    return np.stack(outs), state


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_equals_torch_rnncell(nonlinearity, x64):
    torch.manual_seed(0)
    module = torch.nn.RNNCell(I, H, nonlinearity=nonlinearity).double()
    U, W, b_ih, b_hh = _torch_cell_params(module, 1)
    act = jnp.tanh if nonlinearity == "tanh" else jax.nn.relu
    params = recurrax.CellParams(jnp.asarray(U), jnp.asarray(W), jnp.asarray(b_ih + b_hh))
    xs = np.random.default_rng(0).normal(size=(T, I))
    h0 = np.random.default_rng(1).normal(size=H)
    expected, _ = _run_torch_cell(module, xs, torch.from_numpy(h0))
    _, ys = recurrax.scan(recurrax.RNN(H, activation=act), params, jnp.asarray(xs), jnp.asarray(h0))
    np.testing.assert_allclose(ys, expected, atol=1e-12)


def test_lstm_equals_torch_lstmcell(x64):
    torch.manual_seed(0)
    module = torch.nn.LSTMCell(I, H).double()
    U, W, b_ih, b_hh = _torch_cell_params(module, 4)  # torch's gate order is (i, f, g, o) too
    params = recurrax.CellParams(jnp.asarray(U), jnp.asarray(W), jnp.asarray(b_ih + b_hh))
    xs = np.random.default_rng(0).normal(size=(T, I))
    h0, c0 = np.random.default_rng(1).normal(size=(2, H))
    expected, (h, c) = _run_torch_cell(module, xs, (torch.from_numpy(h0), torch.from_numpy(c0)))
    carry, ys = recurrax.scan(
        recurrax.LSTM(H), params, jnp.asarray(xs), recurrax.LSTMCarry(jnp.asarray(h0), jnp.asarray(c0))
    )
    np.testing.assert_allclose(ys, expected, atol=1e-12)
    np.testing.assert_allclose(carry.c, c.numpy(), atol=1e-12)


def test_reset_after_gru_equals_torch_grucell(x64):
    torch.manual_seed(0)
    module = torch.nn.GRUCell(I, H).double()
    U, W, b_ih, b_hh = _torch_cell_params(module, 3)
    # torch: h' = (1 - z) n + z h, so our z is torch's 1 - z = sig(-a_z): negate that block.
    sign = np.concatenate([np.ones(H), -np.ones(H), np.ones(H)])
    b = (b_ih + np.concatenate([b_hh[: 2 * H], np.zeros(H)])) * sign
    params = recurrax.GRUResetAfterParams(
        jnp.asarray(U * sign), jnp.asarray(W * sign), jnp.asarray(b), jnp.asarray(b_hh[2 * H :])
    )
    xs = np.random.default_rng(0).normal(size=(T, I))
    h0 = np.random.default_rng(1).normal(size=H)
    expected, _ = _run_torch_cell(module, xs, torch.from_numpy(h0))
    _, ys = recurrax.scan(recurrax.GRU(H, reset_after=True), params, jnp.asarray(xs), jnp.asarray(h0))
    np.testing.assert_allclose(ys, expected, atol=1e-12)


def test_lecture_gru_equals_numpy_transcription_of_design(x64):
    """The reset-before GRU of docs/design.md, typed in directly with separate matrices per gate."""
    rng = np.random.default_rng(0)
    U_r, U_z, U_n = rng.normal(size=(3, I, H))
    W_r, W_z, W_n = rng.normal(size=(3, H, H)) / np.sqrt(H)
    b_r, b_z, b_n = rng.normal(size=(3, H))
    sig = lambda a: 1 / (1 + np.exp(-a))
    xs = rng.normal(size=(T, I))
    h = rng.normal(size=H)
    h0, expected = h.copy(), []
    for x in xs:
        r = sig(U_r.T @ x + W_r.T @ h + b_r)          # reset gate (the lecture's o_t)
        z = sig(U_z.T @ x + W_z.T @ h + b_z)          # update gate (the lecture's i_t)
        n = np.tanh(U_n.T @ x + W_n.T @ (r * h) + b_n)  # reset BEFORE the matmul
        h = (1 - z) * h + z * n
        expected.append(h)
    params = recurrax.CellParams(
        jnp.asarray(np.concatenate([U_r, U_z, U_n], 1)),
        jnp.asarray(np.concatenate([W_r, W_z, W_n], 1)),
        jnp.asarray(np.concatenate([b_r, b_z, b_n])),
    )
    _, ys = recurrax.scan(recurrax.GRU(H), params, jnp.asarray(xs), jnp.asarray(h0))
    np.testing.assert_allclose(ys, np.stack(expected), atol=1e-12)
    # and the two GRU forms really differ (the lecture's is not PyTorch's)
    ra = recurrax.GRUResetAfterParams(params.U, params.W, params.b, jnp.zeros(H))
    _, ys_ra = recurrax.scan(recurrax.GRU(H, reset_after=True), ra, jnp.asarray(xs), jnp.asarray(h0))
    assert np.abs(np.asarray(ys_ra) - np.stack(expected)).max() > 1e-3


def test_bidirectional_deep_lstm_equals_torch_packed(x64):
    """deep(bidirectional(lstm)) x2 against torch.nn.LSTM(num_layers=2, bidirectional=True)."""
    torch.manual_seed(0)
    module = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True).double()
    layers = []
    for k in range(2):
        dirs = []
        for suffix in ("", "_reverse"):
            g = lambda n: getattr(module, f"{n}_l{k}{suffix}").detach().numpy()
            dirs.append(recurrax.CellParams(jnp.asarray(g("weight_ih").T), jnp.asarray(g("weight_hh").T),
                                            jnp.asarray(g("bias_ih") + g("bias_hh"))))
        layers.append(recurrax.Bidirectional.Params(*dirs))
    net = recurrax.Deep(*[recurrax.Bidirectional(recurrax.LSTM(H)) for _ in range(2)])
    xs = np.random.default_rng(0).normal(size=(T, I))
    n = 4
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(xs[:, None]), [n])
    with torch.no_grad():
        out, (h_n, c_n) = module(packed)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    carries, ys = net.apply(tuple(layers), jnp.asarray(xs), length=n)
    np.testing.assert_allclose(ys, out[:, 0].numpy(), atol=1e-12)
    top = carries[1]
    np.testing.assert_allclose(top.forward.h, h_n[2, 0].numpy(), atol=1e-12)
    np.testing.assert_allclose(top.backward.c, c_n[3, 0].numpy(), atol=1e-12)
