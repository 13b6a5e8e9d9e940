"""Test configuration: strict JAX numerics for every test, and shared fixtures."""

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
