"""Loaders for the two formats of the lecture's tasks: ``sentence<TAB>label`` and CoNLL-U."""

from __future__ import annotations

import os


class DataFormatError(ValueError):
    """A malformed input file; the message names the file and the line."""


def _read_lines(path):
    # Split on "\n" only: str.splitlines() also breaks at U+0085 (NEL), which occurs
    # inside sentences of the UCI sentiment files.
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def load_tsv(path: str | os.PathLike) -> list[tuple[str, int]]:
    """Read ``sentence<TAB>label`` lines: ``[(sentence, label), ...]`` with integer labels.

    The label is the text after the LAST tab (no CSV quoting: sentences may hold quotes).

    Raises:
      DataFormatError: naming the file and line of a line without a tab or with a
        non-integer label.

    Example:
      >>> import tempfile, os
      >>> from recurrax.data import load_tsv
      >>> path = os.path.join(tempfile.mkdtemp(), "s.txt")
      >>> _ = open(path, "w").write('A "great" film\\t1\\nDull.\\t0\\n')
      >>> load_tsv(path)
      [('A "great" film', 1), ('Dull.', 0)]
    """
    out = []
    for n, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue
        if "\t" not in line:
            raise DataFormatError(f"{path}:{n}: expected 'sentence<TAB>label'; found no tab in {line[:60]!r}.")
        sentence, label = line.rsplit("\t", 1)
        try:
            out.append((sentence.strip(), int(label)))
        except ValueError:
            raise DataFormatError(f"{path}:{n}: the label must be an integer; got {label[:20]!r}.") from None
    return out


_COLUMNS = {"form": 1, "lemma": 2, "upos": 3, "xpos": 4}


def load_conllu(path: str | os.PathLike, tag: str = "upos") -> list[tuple[list[str], list[str]]]:
    """Read a CoNLL-U file: ``[(words, tags), ...]``, one pair per sentence.

    Words are the FORM column; ``tag`` picks UPOS (default) or XPOS. Comment lines,
    multiword-token ranges (``3-4``) and empty nodes (``8.1``) are skipped, as the format
    prescribes for tagging.

    Raises:
      DataFormatError: naming the file and line of a word line that does not have 10
        tab-separated columns or whose ID is not an integer, range or decimal.
    """
    if tag not in ("upos", "xpos"):
        raise ValueError(f'tag must be "upos" or "xpos"; got {tag!r}.')
    col = _COLUMNS[tag]
    sentences, words, tags = [], [], []
    for n, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            if words:
                sentences.append((words, tags))
                words, tags = [], []
            continue
        if line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 10:
            raise DataFormatError(f"{path}:{n}: a CoNLL-U word line has 10 tab-separated columns; found {len(fields)}.")
        ident = fields[0]
        if "-" in ident or "." in ident:
            parts = ident.replace("-", ".").split(".")
            if len(parts) != 2 or not all(p.isdigit() for p in parts):
                raise DataFormatError(f"{path}:{n}: bad ID {ident!r} (expected an integer, a range 3-4 or a decimal 8.1).")
            continue
        if not ident.isdigit():
            raise DataFormatError(f"{path}:{n}: bad ID {ident!r} (expected an integer, a range 3-4 or a decimal 8.1).")
        words.append(fields[1])
        tags.append(fields[col])
    if words:
        sentences.append((words, tags))
    return sentences
