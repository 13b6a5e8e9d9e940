"""A griffe extension for the docs site: recurrax's docstring conventions, read by griffe.

recurrax's docstrings are Google style written for ``help()`` and IDEs, with three habits
that griffe's Google parser and mkdocstrings' Markdown do not know. Before griffe parses
the sections, this extension rewrites

- reStructuredText roles (``:func:`scan```, ``:class:`~recurrax.Cell```) into
  cross-references to the API reference pages. A role naming a public name
  (``recurrax.__all__``, ``recurrax.data.__all__``, ``recurrax.tasks.__all__``, read from
  the source) becomes a required link, so ``mkdocs build --strict`` fails if the
  reference lacks it; any other role becomes code;
- a paragraph ending in ``::`` before an indented block into one ending in ``:``;
- an ``Example:`` section into ``Examples:`` (griffe's name: its ``>>>`` lines render as
  code, not as Markdown quotes);
- the colons on the first line of a ``Returns:`` section (``(cell, params): a cell and its
  params``) into HTML entities: griffe would take the text before a colon for a type;
- one ``Args:`` entry for several parameters (``atol, rtol: tolerances ...``, the names
  possibly wrapped over lines) into one entry per parameter with the same description,
  so that griffe checks every name against the signature.
"""

from __future__ import annotations

import ast
import pathlib
import re

import griffe

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "recurrax"
ROLE = re.compile(r":(?:func|class|meth|attr|mod):`(~?)([\w.]+)`")
LITERAL_BLOCK = re.compile(r"::$", re.MULTILINE)
EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
ARGS = re.compile(r"^(\s*)(Args|Arguments|Parameters|Keyword Args|Other Parameters):\s*$")
RETURNS = re.compile(r"^\s*(Returns|Yields):\s*$")
COLON_OUTSIDE_CODE = re.compile(r"(``.*?``|`[^`]*`)|:")
GROUPED = re.compile(r"^(\s*)((?:[\w*]+,\s*)+[\w*]+)\s*:(.*)$", re.DOTALL)


def _all(path: pathlib.Path) -> list:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return ast.literal_eval(node.value)
    raise ValueError(f"{path} defines no __all__")


def public_names() -> dict:
    """Short name -> the identifier it has in the API reference (``recurrax.data.Vocab``)."""
    names = {name: f"recurrax.{name}" for name in _all(PACKAGE / "__init__.py")}
    for sub in ("data", "tasks"):
        names.update({name: f"recurrax.{sub}.{name}" for name in _all(PACKAGE / sub / "__init__.py")})
    return names


class RstRoles(griffe.Extension):
    def __init__(self) -> None:
        super().__init__()
        self.names = public_names()

    def _link(self, match: re.Match) -> str:
        tilde, target = match.groups()
        shown = target.rsplit(".", 1)[-1] if tilde else target
        parts = target.removeprefix("recurrax.").split(".")
        # "data.Vocab" and "Vocab" both name recurrax.data.Vocab
        head = parts[1] if parts[0] in ("data", "tasks") and len(parts) > 1 else parts[0]
        if head not in self.names:
            return f"`{shown}`"
        rest = parts[2:] if head != parts[0] else parts[1:]
        identifier = ".".join([self.names[head], *rest])
        # a member (MinGRU.linear_coefficients) is linked when the reference renders it
        optional = " optional" if rest else ""
        return f'<autoref identifier="{identifier}"{optional}><code>{shown}</code></autoref>'

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            text = ROLE.sub(self._link, obj.docstring.value)
            text = EXAMPLE.sub(r"\1Examples:", LITERAL_BLOCK.sub(":", text))
            obj.docstring.value = split_grouped_args(escape_returns_colons(text))


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def escape_returns_colons(text: str) -> str:
    lines = text.split("\n")
    for i, line in enumerate(lines[:-1]):
        if RETURNS.match(line):
            lines[i + 1] = COLON_OUTSIDE_CODE.sub(lambda m: m.group(1) or "&#58;", lines[i + 1])
    return "\n".join(lines)


def split_grouped_args(text: str) -> str:
    """``a, b: desc`` in an ``Args:`` section -> ``a: desc`` and ``b: desc``."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        out.append(lines[i])
        header = ARGS.match(lines[i])
        i += 1
        if not header:
            continue
        section = len(header.group(1))
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > section):
            # one entry: its first line and the lines indented deeper than it
            start, item = i, _indent(lines[i])
            i += 1
            while i < len(lines) and lines[i].strip() and _indent(lines[i]) > item:
                i += 1
            entry = "\n".join(lines[start:i])
            grouped = GROUPED.match(entry) if entry.strip() else None
            if grouped is None:
                out.append(entry)
                continue
            indent, names, rest = grouped.groups()
            out.extend(f"{indent}{name.strip()}:{rest}" for name in names.split(","))
    return "\n".join(out)
