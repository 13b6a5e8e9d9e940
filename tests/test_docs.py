"""The documentation stays complete and true to the code: read as text, no docs build needed.

`mkdocs build --strict` (.ci/run) checks links and cross-references between the pages;
these tests check what it cannot: that the API reference names every public name, that
the README's commands are the ones CI runs, that its example runs, and that the docs cite
files and private names that exist.
"""

import importlib
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np

import recurrax

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def reference_targets() -> set:
    """Every ``::: identifier`` of the API reference pages."""
    pages = sorted((ROOT / "docs" / "reference").glob("*.md"))
    assert pages, "docs/reference/ has no pages"
    return {m.group(1) for p in pages for m in re.finditer(r"^::: (\S+)\s*$", p.read_text(), re.MULTILINE)}


SUBPACKAGES = ("models", "train", "plots", "data", "tasks")  # the applications over the core


def public_identifiers() -> set:
    """``recurrax.NAME`` for every name of ``recurrax.__all__``, and the names of the subpackages."""
    names = {f"recurrax.{name}" for name in recurrax.__all__}
    for sub in SUBPACKAGES:
        module = importlib.import_module(f"recurrax.{sub}")
        names.add(f"recurrax.{sub}")
        names.update(f"recurrax.{sub}.{name}" for name in module.__all__)
    return names


def resolve(identifier: str):
    module, _, attr = identifier.rpartition(".")
    try:
        return importlib.import_module(identifier)
    except ImportError:
        return getattr(importlib.import_module(module), attr)


def test_the_api_reference_names_every_public_name():
    missing = public_identifiers() - reference_targets()
    assert not missing, f"add these to a page of docs/reference/: {sorted(missing)}"
    assert {"recurrax.data", "recurrax.tasks", "recurrax.scan", "recurrax.data.Vocab"} <= public_identifiers()


def test_the_api_reference_names_only_what_exists():
    for identifier in reference_targets():
        assert resolve(identifier) is not None, identifier


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def bash_blocks(text: str) -> list:
    return re.findall(r"```bash\n(.*?)\n```", text, re.DOTALL)


def test_ci_runs_the_readme_quickstart_test_command_verbatim():
    quickstart = README.read_text().split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    demo, tests = bash_blocks(quickstart)
    assert demo == 'pip install -e ".[demo]" && python -m recurrax demo'  # training and plots
    extras = _pyproject()["project"]["optional-dependencies"]
    assert extras["demo"] == ["recurrax[train,plot]"] and any(d.startswith("matplotlib") for d in extras["plot"])
    assert {d.split(">")[0] for d in extras["train"]} == {"optax", "orbax-checkpoint", "tqdm"}
    assert tests.startswith("pip install torch==") and "ruff check" in tests and "python -m pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci, f".ci/run must run the README's test command verbatim: {tests!r}"


def test_readme_links_point_at_files_in_the_repository():
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text())
    relative = [link for link in links if "://" not in link]
    assert "docs/api-tour.md" in relative
    missing = [link for link in relative if not (ROOT / link).exists()]
    assert not missing, missing


def test_readme_example_runs():
    (code,) = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    scope = {}
    exec(compile(code, str(README), "exec"), scope)
    ys, lengths, grads, params = scope["ys"], scope["lengths"], scope["grads"], scope["params"]
    assert ys.shape == (50, 32, 128)
    padding = jnp.arange(50)[:, None] >= lengths[None, :]
    assert bool((ys[padding] == 0).all()) and bool((ys[~padding] != 0).any())
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


CITING = [*sorted((ROOT / "docs").glob("*.md")), README, ROOT / "BENCHMARKS.md", ROOT / "benchmarks" / "HISTORY.md"]
PATH = re.compile(r"`((?:recurrax|tests|benchmarks|examples|docs)/[\w./-]*\w)`")
PRIVATE = re.compile(r"`(_[A-Za-z]\w*)`")


def test_docs_cite_files_that_exist():
    missing = [f"{p.name}: {m}" for p in CITING for m in PATH.findall(p.read_text()) if not (ROOT / m).exists()]
    assert not missing, missing


def test_docs_cite_private_names_that_exist():
    source = "\n".join(p.read_text() for p in [*ROOT.glob("recurrax/**/*.py"), *ROOT.glob("benchmarks/**/*.py")])
    missing = [f"{p.name}: {name}" for p in CITING for name in PRIVATE.findall(p.read_text())
               if not re.search(rf"\b{name}\b", source)]
    assert not missing, missing


def test_cited_benchmark_sections_exist():
    """A citation of BENCHMARKS.md or benchmarks/HISTORY.md with a quoted title, in the code or the
    docs, names text that is in that file (sections moved to the history must be cited there)."""
    cited = re.compile(r'(BENCHMARKS|benchmarks/HISTORY)\.md\)?,\s+"([^"]+)"')
    files = [*ROOT.glob("recurrax/**/*.py"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("tests/*.py"), *CITING]
    flat = lambda text: " ".join(text.replace("#", " ").replace("*", " ").split()).lower()  # noqa: E731
    targets = {"BENCHMARKS": flat((ROOT / "BENCHMARKS.md").read_text()),
               "benchmarks/HISTORY": flat((ROOT / "benchmarks" / "HISTORY.md").read_text())}
    found = [(p.name, m.group(1), flat(m.group(2))) for p in files for m in cited.finditer(p.read_text())]
    assert len(found) > 5, found
    missing = [f"{name}: {target}.md, {title!r}" for name, target, title in found if title not in targets[target]]
    assert not missing, missing


def test_the_audit_table_lists_every_public_name_and_command():
    """docs/audit.md stays complete as the API grows: each public name and CLI command has a row."""
    import recurrax
    from recurrax._apps import _cli

    audit = (ROOT / "docs" / "audit.md").read_text()
    names = list(recurrax.__all__)
    for sub in SUBPACKAGES:
        names += [f"{sub}.{n}" for n in importlib.import_module(f"recurrax.{sub}").__all__]
    names += ["recurrax.nnx.Recurrent", "recurrax.equinox.Recurrent"]
    missing = [n for n in names if f"`{n}`" not in audit]
    commands = re.findall(r"\{([a-z,]+)\}", _cli_help(_cli))[0].split(",")
    missing += [c for c in commands if f"`python -m recurrax {c}`" not in audit and f"`{c}`" not in audit]
    assert not missing, f"docs/audit.md has no row for {missing}"


def _cli_help(cli) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        cli.main(["--help"])
    return out.getvalue()


def test_gradients_page_runs():
    """docs/gradients.md's worked debugging session finds the planted bug at its step."""
    namespace = {}
    for block in re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "gradients.md").read_text(), re.DOTALL):
        exec(compile(block, "docs/gradients.md", "exec"), namespace)  # noqa: S102
    assert namespace["report"].ok and namespace["cell"].hidden_size == 4
