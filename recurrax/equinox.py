"""recurrax cells and layers as equinox modules (docs/equinox.md).

``import recurrax`` does not import this module nor equinox; ``import recurrax.equinox``
needs equinox (``pip install "recurrax[equinox]"``) and raises ``ImportError`` saying so without it.

Example:
  >>> import jax, jax.numpy as jnp, recurrax, recurrax.equinox
  >>> rnn = recurrax.equinox.Recurrent(recurrax.LSTM(8), 3, key=jax.random.key(0))
  >>> carry, ys = rnn(jnp.ones((5, 2, 3)), length=jnp.array([5, 2]))
  >>> ys.shape, carry.h.shape
  ((5, 2, 8), (2, 8))
"""

from __future__ import annotations

from typing import Any

from recurrax._core import _frameworks
from recurrax._core._base import Array, Carry, Params
from recurrax._core._interop import _require

eqx = _require("equinox", "equinox")

__all__ = ["Recurrent"]


class Recurrent(eqx.Module):
    """Any recurrax cell or layer as an ``eqx.Module``, its params a pytree field.

    ``params`` (the pytree of ``cell_or_layer.init``) is the module's only array field, so
    ``eqx.filter_value_and_grad``, ``eqx.filter_jit`` and ``eqx.partition(model,
    eqx.is_array)`` see exactly those leaves; ``cell_or_layer`` and the scan options are
    static fields. A call computes exactly what the functional path computes with
    ``params``: :func:`recurrax.scan` for a cell (with ``scan_options``), ``layer.apply``
    for a layer.

    Args:
      cell_or_layer: a cell (``init``, ``initial_carry``, ``apply``; e.g.
        ``recurrax.LSTM(8)``) or a layer (``init``, ``apply(params, xs, *, length,
        carry)``; e.g. ``recurrax.Bidirectional(recurrax.LSTM(8))``, ``recurrax.Deep``).
      input_size: the number of input features, for ``cell_or_layer.init``.
      key: the init key.
      params: existing params instead of ``input_size`` and ``key`` (e.g. from
        :func:`recurrax.from_torch`).
      **scan_options: for a cell, keyword options of :func:`recurrax.scan`: ``reverse``,
        ``unroll``, ``backward``, ``checkpoint``, ``projection``. A layer takes none (give
        them to the layer, e.g. ``recurrax.Unidirectional(cell, reverse=True)``).

    Raises:
      TypeError: ``cell_or_layer`` is neither, an unknown option, or not exactly one of
        ``params`` and ``input_size`` with ``key``.
      ValueError: scan options for a layer.

    Example:
      >>> import jax, jax.numpy as jnp, equinox as eqx, recurrax, recurrax.equinox
      >>> layer = recurrax.Bidirectional(recurrax.GRU(4))
      >>> rnn = recurrax.equinox.Recurrent(layer, 3, key=jax.random.key(0))
      >>> (hf, hb), ys = rnn(jnp.ones((6, 2, 3)), length=jnp.array([6, 0]))
      >>> ys.shape, bool((ys[:, 1] == 0).all())
      ((6, 2, 8), True)
      >>> grads = eqx.filter_grad(lambda m: m(jnp.ones((6, 3)))[1].sum())(rnn)
      >>> grads.params.forward.U.shape
      (3, 12)
    """

    params: Any
    cell_or_layer: Any = eqx.field(static=True)
    scan_options: tuple = eqx.field(static=True)

    def __init__(self, cell_or_layer: Any, input_size: int | None = None, *, key: Any = None,
                 params: Params | None = None, **scan_options: Any):
        self.scan_options = _frameworks.check_wrapped(cell_or_layer, scan_options)
        self.cell_or_layer = cell_or_layer
        self.params = _frameworks.initial_params(cell_or_layer, input_size, key, params, "key")

    def __call__(self, xs: Array, carry: Carry | None = None, *, length: Any = None, resets: Any = None,
                 key: Any = None) -> tuple:
        """Run over ``xs``: ``[T, input_size]`` (one example) or ``[T, *batch, input_size]``.

        Args:
          xs: the inputs, time-major.
          carry: the initial carry (``None``: zeros), with the batch dimensions of ``xs``.
          length: valid steps: ``None`` (all ``T``), an int, or an int array ``[*batch]``.
          resets: packed sequences (docs/packed.md): bool ``[T, *batch]``, True where a new
            sequence starts (the carry restarts from ``carry``); ``None``: none.
          key: a ``jax.random`` key for a stochastic cell or layer (``recurrax.Dropout``,
            ``recurrax.Zoneout``; docs/packed.md gives the rule per example and layer);
            ``None``: evaluation mode. Other cells ignore it.

        Returns:
          ``(final_carry, ys)`` as :func:`recurrax.scan` (or ``layer.apply``) returns them,
          ``ys`` ``[T, *batch, output_size]``, zero past ``length``.
        """
        return _frameworks.run(self.cell_or_layer, self.scan_options, self.params, xs, carry, length=length,
                               resets=resets, key=key)
