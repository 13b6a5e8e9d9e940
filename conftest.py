"""Doctests that need an optional framework.

``--doctest-modules`` imports every module under recurrax/; recurrax/nnx.py and
recurrax/equinox.py raise ``ImportError`` without their framework, which pytest reports
as a collection error. Without the framework their doctests are reported as skipped, and
so is any other doctest whose example imports a framework that is not installed (the
interop examples use torch, flax and equinox: the ``anchors`` extra).
"""

import importlib
import pathlib
import re

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent / "recurrax"
OPTIONAL = {PACKAGE / "nnx.py": "flax.nnx", PACKAGE / "equinox.py": "equinox"}


@pytest.hookimpl(tryfirst=True)
def pytest_make_collect_report(collector):
    framework = OPTIONAL.get(getattr(collector, "path", None)) if isinstance(collector, pytest.File) else None
    if framework is None:
        return None
    error = _import_error(framework)
    if error is None:
        return None
    reason = f"{framework} is not installed ({error})"
    return pytest.CollectReport(collector.nodeid, "skipped", (str(collector.path), 0, reason), [])


FRAMEWORKS = ("torch", "flax", "equinox", "haiku")


def _import_error(module: str):
    """The ``ImportError`` importing ``module`` raises, or ``None``."""
    try:
        importlib.import_module(module)
    except ImportError as e:
        return e
    return None


def _imported(source: str) -> set:
    """The top-level modules that ``import`` and ``from`` statements in ``source`` name."""
    statements = re.findall(r"^\s*(?:from|import)\s+(.+)$", source, re.M)
    return {name.split()[0].split(".")[0] for s in statements for name in s.split(" import ")[0].split(",")}


def pytest_collection_modifyitems(items):
    for item in items:
        dtest = getattr(item, "dtest", None)  # a doctest item
        if dtest is None:
            continue
        imported = _imported("\n".join(example.source for example in dtest.examples))
        missing = sorted(m for m in imported & set(FRAMEWORKS) if _import_error(m) is not None)
        if missing:
            item.add_marker(pytest.mark.skip(reason=f"the example imports {', '.join(missing)}, not installed"))
