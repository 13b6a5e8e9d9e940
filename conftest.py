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
    try:
        importlib.import_module(framework)
    except ImportError as e:
        reason = f"{framework} is not installed ({e})"
        return pytest.CollectReport(collector.nodeid, "skipped", (str(collector.path), 0, reason), [])
    return None


FRAMEWORKS = ("torch", "flax", "equinox", "haiku")


def _missing(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return True
    return False


def pytest_collection_modifyitems(items):
    for item in items:
        dtest = getattr(item, "dtest", None)  # a doctest item
        if dtest is None:
            continue
        source = "\n".join(example.source for example in dtest.examples)
        imported = set(re.findall(r"^\s*(?:import|from)\s+([A-Za-z_]\w*)", source, re.M))
        imported |= {m for line in re.findall(r"^\s*import\s+(.+)$", source, re.M) for m in re.findall(r"(?:^|,)\s*([A-Za-z_]\w*)", line)}
        missing = sorted(m for m in imported & set(FRAMEWORKS) if _missing(m))
        if missing:
            item.add_marker(pytest.mark.skip(reason=f"the example imports {', '.join(missing)}, not installed"))
