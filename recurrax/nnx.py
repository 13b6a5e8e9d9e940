"""recurrax cells and layers as flax.nnx modules (docs/flax.md).

``import recurrax`` does not import this module nor flax; ``import recurrax.nnx`` needs
flax >= 0.12 (``pip install "recurrax[flax]"``) and raises ``ImportError`` saying so without it.

Example:
  >>> import jax, jax.numpy as jnp, recurrax, recurrax.nnx
  >>> from flax import nnx
  >>> rnn = recurrax.nnx.Recurrent(recurrax.LSTM(8), 3, rngs=nnx.Rngs(0))
  >>> carry, ys = rnn(jnp.ones((5, 2, 3)), length=jnp.array([5, 2]))
  >>> ys.shape, carry.h.shape
  ((5, 2, 8), (2, 8))
"""

from __future__ import annotations

import importlib
from typing import Any

import jax

from recurrax._core import _frameworks
from recurrax._core._base import Array, Carry, Params
from recurrax._core._interop import _require

nnx = _require("flax.nnx", "nnx")
if not hasattr(nnx, "data"):  # flax < 0.12 keeps no Variables inside a module's pytree attributes
    raise ImportError(f"recurrax.nnx needs flax >= 0.12 (flax.nnx.data); found flax "
                      f"{getattr(importlib.import_module('flax'), '__version__', '?')}. Upgrade it with "
                      f"pip install -U flax.")

__all__ = ["Recurrent"]


class Recurrent(nnx.Module):
    """Any recurrax cell or layer as an ``nnx.Module``, its params held as ``nnx.Param``s.

    The params pytree of ``cell_or_layer.init`` is kept leaf by leaf as ``nnx.Param``
    (``self.params``, the same structure, e.g. ``CellParams(U=Param, W=Param, b=Param)``),
    so ``nnx.state``, ``nnx.grad`` and ``nnx.Optimizer(..., wrt=nnx.Param)`` see them. A
    call computes exactly what the functional path computes with those params:
    :func:`recurrax.scan` for a cell (with ``scan_options``), ``layer.apply`` for a layer.

    Args:
      cell_or_layer: a cell (``init``, ``initial_carry``, ``apply``; e.g.
        ``recurrax.LSTM(8)``) or a layer (``init``, ``apply(params, xs, *, length,
        carry)``; e.g. ``recurrax.Bidirectional(recurrax.LSTM(8))``, ``recurrax.Deep``).
      input_size: the number of input features, for ``cell_or_layer.init``.
      rngs: where the init key comes from (``rngs.params()``).
      params: existing params instead of ``input_size`` and ``rngs`` (e.g. from
        :func:`recurrax.from_torch`).
      **scan_options: for a cell, keyword options of :func:`recurrax.scan`: ``reverse``,
        ``unroll``, ``backward``, ``checkpoint``, ``projection``. A layer takes none (give
        them to the layer, e.g. ``recurrax.Unidirectional(cell, reverse=True)``).

    Raises:
      TypeError: ``cell_or_layer`` is neither, an unknown option, ``rngs`` not an
        ``nnx.Rngs``, or not exactly one of ``params`` and ``input_size`` with ``rngs``.
      ValueError: scan options for a layer.

    Example:
      >>> import jax, jax.numpy as jnp, recurrax, recurrax.nnx
      >>> from flax import nnx
      >>> layer = recurrax.Bidirectional(recurrax.GRU(4))
      >>> rnn = recurrax.nnx.Recurrent(layer, 3, rngs=nnx.Rngs(0))
      >>> (hf, hb), ys = rnn(jnp.ones((6, 2, 3)), length=jnp.array([6, 0]))
      >>> ys.shape, bool((ys[:, 1] == 0).all())
      ((6, 2, 8), True)
      >>> len(jax.tree.leaves(nnx.state(rnn, nnx.Param)))  # U, W, b per direction
      6
    """

    def __init__(self, cell_or_layer: Any, input_size: int | None = None, *,
                 rngs: nnx.Rngs | None = None, params: Params | None = None, **scan_options: Any):
        self.scan_options = _frameworks.check_wrapped(cell_or_layer, scan_options)
        self.cell_or_layer = cell_or_layer
        if rngs is not None and not isinstance(rngs, nnx.Rngs):
            raise TypeError(f"rngs must be an nnx.Rngs (e.g. nnx.Rngs(0)); got a {type(rngs).__name__}.")
        key = None if rngs is None else rngs.params()
        params = _frameworks.initial_params(cell_or_layer, input_size, key, params, "rngs")
        self.params = nnx.data(jax.tree.map(nnx.Param, params))

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
        params = jax.tree.map(lambda v: v.get_value(), self.params, is_leaf=lambda v: isinstance(v, nnx.Variable))
        return _frameworks.run(self.cell_or_layer, self.scan_options, params, xs, carry, length=length,
                               resets=resets, key=key)
