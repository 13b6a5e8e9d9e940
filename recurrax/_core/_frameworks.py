"""The framework-neutral half of ``recurrax.nnx`` and ``recurrax.equinox``.

Both wrap any recurrax cell or layer in their framework's module: a cell (``init``,
``initial_carry``, ``apply``) runs with :func:`recurrax.scan` and its keyword options, a
layer (``init``, ``apply(params, xs, *, length, carry)``) with its own ``apply``. This
module decides which, checks the arguments, and runs it, so the two frameworks compute
exactly what the functional path computes.
"""

from __future__ import annotations

import inspect
from typing import Any

from recurrax._core._base import Array, Carry, Params
from recurrax._core._scan import scan
from recurrax._core._validate import check_cell, check_positive_int

# What changes from call to call (a layer's ``apply`` takes these too); the other keyword
# options of scan are fixed per module and read from its signature, so a new one reaches the
# framework modules.
CALL_ARGUMENTS = ("length", "resets", "key")
SCAN_OPTIONS = tuple(
    name for name, p in inspect.signature(scan).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in CALL_ARGUMENTS
)


def is_cell(cell_or_layer: Any) -> bool:
    return hasattr(cell_or_layer, "initial_carry")


def check_wrapped(cell_or_layer: Any, scan_options: dict) -> tuple:
    """``scan_options`` checked against what ``cell_or_layer`` takes, as sorted
    ``(name, value)`` pairs: hashable, since the frameworks keep them as static data."""
    per_call = sorted(set(scan_options) & set(CALL_ARGUMENTS))
    if per_call:
        raise TypeError(f"{', '.join(per_call)} change(s) from call to call: pass them when calling the "
                        f"module (module(xs, {per_call[0]}=...)), not when building it.")
    unknown = sorted(set(scan_options) - set(SCAN_OPTIONS))
    if unknown:
        raise TypeError(f"unknown scan option(s) {', '.join(unknown)}; recurrax.scan takes "
                        f"{', '.join(SCAN_OPTIONS)}.")
    if is_cell(cell_or_layer):
        check_cell(cell_or_layer, "cell_or_layer")
    elif not (callable(getattr(cell_or_layer, "init", None)) and callable(getattr(cell_or_layer, "apply", None))):
        raise TypeError(
            f"cell_or_layer must be a cell (init, initial_carry, apply; e.g. recurrax.LSTM(8)) or a "
            f"layer (init, apply(params, xs, *, length, carry); e.g. recurrax.Bidirectional("
            f"recurrax.LSTM(8))); got a {type(cell_or_layer).__name__}."
        )
    elif scan_options:
        raise ValueError(
            f"{', '.join(sorted(scan_options))} are options of recurrax.scan, which runs a cell; "
            f"cell_or_layer is a layer, which runs its own scans. Give the option to the layer "
            f"(e.g. recurrax.Unidirectional(cell, reverse=True)) or wrap the cell itself."
        )
    return tuple(sorted(scan_options.items()))


def initial_params(cell_or_layer: Any, input_size: int | None, key: Any, params: Params | None,
                   key_name: str) -> Params:
    """``params`` as given, or ``cell_or_layer.init(key, input_size)``: one or the other."""
    given = f"input_size={input_size!r}, {key_name} {'given' if key is not None else 'None'}"
    if params is not None:
        if input_size is not None or key is not None:
            raise TypeError(f"pass either params or input_size and {key_name} (to initialise them with "
                            f"cell_or_layer.init), not both; got params and {given}.")
        return params
    if input_size is None or key is None:
        raise TypeError(f"input_size and {key_name} are needed to initialise the params with "
                        f"cell_or_layer.init (or pass params=); got {given}.")
    return cell_or_layer.init(key, check_positive_int("input_size", input_size))


def run(cell_or_layer: Any, scan_options: tuple, params: Params, xs: Array, carry: Carry | None,
        **call: Any) -> tuple:
    """``(final_carry, ys)``: :func:`recurrax.scan` for a cell, ``apply`` for a layer; ``call``
    holds the :data:`CALL_ARGUMENTS`."""
    if is_cell(cell_or_layer):
        return scan(cell_or_layer, params, xs, carry, **call, **dict(scan_options))
    return cell_or_layer.apply(params, xs, carry=carry, **call)
