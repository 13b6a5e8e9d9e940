"""The package's layering, read from its source: the core imports no application, no cycles."""

import ast
import pathlib
import re
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "recurrax"


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict:
    """Module -> the recurrax modules it imports (anywhere in the file, lazy imports too)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name, found = module_name(path), set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("recurrax"):
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("recurrax"))
        graph[name] = found
    # "from recurrax._core import _bptt" names a module; keep only names that are modules
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def test_the_core_imports_no_application():
    graph = imports()
    core = [m for m in graph if m.startswith("recurrax._core")]
    assert core, "no core modules found"
    for m in core:
        outside = {d for d in graph[m] if not d.startswith("recurrax._core")}
        assert not outside, f"{m} imports {outside} from outside recurrax/_core"


def test_no_import_cycles():
    graph = imports()
    state = {}

    def visit(m, path):
        state[m] = "open"
        for d in graph[m]:
            if state.get(d) == "open":
                raise AssertionError(f"import cycle: {' -> '.join(path + [d])}")
            if d not in state:
                visit(d, path + [d])
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_no_private_door_to_the_built_in_cells():
    # the removed private hierarchy must not come back
    pattern = re.compile(r"spec_of|_Method|\.apply\.spec|_Spec\b")
    hits = [f"{p}:{i}" for p in PACKAGE.rglob("*.py") for i, line in enumerate(p.read_text().splitlines(), 1)
            if pattern.search(line)]
    assert not hits, hits


def test_no_reference_to_a_design_file_outside_the_repository():
    root = PACKAGE.parent
    files = [*PACKAGE.rglob("*.py"), *root.glob("tests/*.py"), *root.glob("docs/*.md"), root / "README.md",
             root / "BENCHMARKS.md", root / "benchmarks" / "HISTORY.md"]
    outside = "DESIGN" + ".md"  # spelled in two parts so that this file does not cite it
    hits = [str(p) for p in files if outside in p.read_text()]
    assert not hits, hits


APPLICATIONS = ("optax", "orbax", "tqdm", "matplotlib", "chex", "torch", "flax", "equinox", "haiku")


def test_import_recurrax_is_the_core_alone():
    """``import recurrax`` loads jax and numpy and nothing of the applications or the anchors, and
    the core runs with every one of those libraries made unimportable."""
    subpackages = tuple(f"recurrax.{m}" for m in ("models", "train", "plots", "data", "tasks", "_apps", "nnx",
                                                  "equinox"))
    code = f"""
import sys
blocked = {APPLICATIONS}
for m in blocked:
    sys.modules[m] = None  # "import m" raises ImportError
import jax.numpy as jnp, recurrax
loaded = [m for m in {subpackages} if m in sys.modules]
if loaded:
    sys.exit(f"import recurrax loaded {{loaded}}")
cell = recurrax.Stack(recurrax.LSTM(4), recurrax.GRU(3))
params = cell.init(__import__("jax").random.key(0), 2)
_, ys = recurrax.scan(cell, params, jnp.ones((5, 2)))
assert ys.shape == (5, 3)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    code = f"import sys, recurrax; print([m for m in {APPLICATIONS} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_the_root_namespace_is_small_and_the_dependencies_are_the_core_s():
    import tomllib

    import recurrax

    assert len(recurrax.__all__) <= 45, len(recurrax.__all__)
    assert len(set(recurrax.__all__)) == len(recurrax.__all__)
    # one spelling: no lowercase factory beside a class of the same name
    lower = {n.lower() for n in recurrax.__all__ if n[0].isupper()}
    assert not lower & set(recurrax.__all__), lower & set(recurrax.__all__)
    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~\[ ]", d)[0] for d in project["dependencies"]}
    assert names == {"jax", "jaxlib", "numpy"}, names


def test_the_framework_modules_without_their_framework():
    # As on a machine without flax and equinox: importing recurrax.nnx / recurrax.equinox
    # says what to install, and the doctest collection over recurrax/ skips them (no error).
    code = """
import sys
sys.modules["flax"] = sys.modules["equinox"] = None  # makes "import flax" raise ImportError
for module, lib in (("recurrax.nnx", "flax"), ("recurrax.equinox", "equinox")):
    try:
        __import__(module)
        sys.exit(f"{module} imported without {lib}")
    except ImportError as e:
        if f"pip install {lib}" not in str(e):
            sys.exit(f"{module}: the ImportError does not say pip install {lib}: {e}")
import pytest
sys.exit(pytest.main(["--collect-only", "-q", "-rs", "recurrax"]))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "SKIPPED [1] recurrax/nnx.py" in out and "SKIPPED [1] recurrax/equinox.py" in out, out
