"""Doctest collection of recurrax's optional framework modules.

``--doctest-modules`` imports every module under recurrax/; recurrax/nnx.py and
recurrax/equinox.py raise ``ImportError`` without their framework, which pytest reports
as a collection error. Without the framework their doctests are reported as skipped.
"""

import importlib
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent / "recurrax"
OPTIONAL = {PACKAGE / "nnx.py": "flax.nnx", PACKAGE / "equinox.py": "equinox"}


@pytest.hookimpl(tryfirst=True)
def pytest_make_collect_report(collector):
    framework = OPTIONAL.get(getattr(collector, "path", None)) if isinstance(collector, pytest.File) else None
    if framework is None:
        return None
    try:
        importlib.import_module(framework)
    except ImportError as e:
        reason = f"{framework} is not installed ({e})"
        return pytest.CollectReport(collector.nodeid, "skipped", (str(collector.path), 0, reason), [])
    return None
