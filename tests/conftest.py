"""Test configuration: strict JAX numerics for every test, and shared fixtures."""

import os
import sys

import jax
import pytest

from tests.helpers import CELLS

# No silent promotion anywhere in the library: mixed dtypes and rank broadcasting raise.
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

# Most of the suite's time is XLA compiling small programs it then runs once or twice, so
# the tests compile with XLA's backend optimisations off (about 25% less time; the values
# are the same programs' to rounding, which every tolerance here allows). Set
# JAX_DISABLE_MOST_OPTIMIZATIONS=0 to test the optimised programs users run.
if "JAX_DISABLE_MOST_OPTIMIZATIONS" not in os.environ:
    jax.config.update("jax_disable_most_optimizations", True)


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
