"""Test configuration: strict JAX numerics for every test, and shared fixtures."""

import sys

import jax
import pytest

from tests.helpers import CELLS

# No silent promotion anywhere in the library: mixed dtypes and rank broadcasting raise.
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(params=sorted(CELLS))
def cell_name(request):
    return request.param


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture
def optax_promotion():
    """optax's Adam computes ``b1 ** count`` (a float to an int32 power), which strict
    promotion rejects; tests that train with it run with JAX's standard promotion."""
    with jax.numpy_dtype_promotion("standard"):
        yield


def pytest_terminal_summary(terminalreporter):
    """How many inputs the fuzz tests tried (tests/test_fuzz.py counts them)."""
    fuzz = sys.modules.get("tests.test_fuzz")
    if fuzz is not None and fuzz.EXAMPLES:
        terminalreporter.write_sep("-", f"fuzz inputs tried: {sum(fuzz.EXAMPLES.values())}")
        for name, n in sorted(fuzz.EXAMPLES.items()):
            terminalreporter.write_line(f"{name}: {n}")
