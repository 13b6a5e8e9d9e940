"""Loaders for the two formats of the lecture's tasks: ``sentence<TAB>label`` and CoNLL-U."""

from __future__ import annotations

import os
import re

_INTEGER = re.compile(r"[+-]?[0-9]+")


class DataFormatError(ValueError):
    """A malformed input file; the message names the file and the line."""


def _read_lines(path) -> list[str]:
    """The file's lines, without a UTF-8 byte-order mark and with ``\\r\\n`` / ``\\r`` read as ``\\n``.

    Only these break lines: ``str.splitlines()`` also breaks at U+0085 (NEL), which occurs
    inside sentences of the UCI sentiment files.
    """
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        # Count in bytes: a line number is what finds the bad byte in an editor.
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataFormatError(
            f"{path}:{line}: not UTF-8 (byte 0x{raw[e.start]:02x} at byte column {column}); re-save the file "
            f"as UTF-8 (e.g. iconv -f latin1 -t utf-8)."
        ) from None
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def load_tsv(path: str | os.PathLike) -> list[tuple[str, int]]:
    """Read ``sentence<TAB>label`` lines: ``[(sentence, label), ...]`` with integer labels.

    The label is the text after the LAST tab (no CSV quoting: sentences may hold quotes).
    The file is UTF-8, with or without a byte-order mark, with ``\\n``, ``\\r\\n`` or ``\\r``
    line endings; blank lines are skipped.

    Raises:
      DataFormatError: naming the file and line of bytes that are not UTF-8, of a line
        without a tab, with an empty sentence or with a label that is not an integer
        (ASCII digits); naming the file if it holds no lines at all.

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
        if not sentence.strip():
            raise DataFormatError(f"{path}:{n}: the sentence before the tab is empty.")
        # Not int() alone: it also takes "1_0" (10) and non-ASCII digits.
        if not _INTEGER.fullmatch(label.strip()):
            raise DataFormatError(f"{path}:{n}: the label must be an integer; got {label[:20]!r}.")
        out.append((sentence.strip(), int(label)))
    if not out:
        raise DataFormatError(f"{path}: no 'sentence<TAB>label' lines (the file is empty or blank).")
    return out


_COLUMNS = {"form": 1, "lemma": 2, "upos": 3, "xpos": 4}


def load_conllu(path: str | os.PathLike, tag: str = "upos") -> list[tuple[list[str], list[str]]]:
    """Read a CoNLL-U file: ``[(words, tags), ...]``, one pair per sentence.

    Words are the FORM column; ``tag`` picks UPOS (default) or XPOS. Comment lines,
    multiword-token ranges (``3-4``) and empty nodes (``8.1``) are skipped, as the format
    prescribes for tagging.

    The file is UTF-8, with or without a byte-order mark, with ``\\n``, ``\\r\\n`` or ``\\r``
    line endings; sentences end at blank lines (several in a row are one break).

    Raises:
      DataFormatError: naming the file and line of bytes that are not UTF-8, of a word line
        that does not have 10 tab-separated columns, has an empty column, or whose ID is
        not an integer, range or decimal; naming the file if it holds no word lines.

    Example:
      >>> import tempfile, os
      >>> from recurrax.data import load_conllu
      >>> path = os.path.join(tempfile.mkdtemp(), "t.conllu")
      >>> _ = open(path, "w").write("# text = Hi\\n1\\tHi\\thi\\tINTJ\\tUH\\t_\\t0\\troot\\t_\\t_\\n\\n")
      >>> load_conllu(path)
      [(['Hi'], ['INTJ'])]
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
        if "" in fields:  # the format writes "_" for a missing value
            raise DataFormatError(f"{path}:{n}: column {fields.index('') + 1} is empty (CoNLL-U writes '_' for none).")
        ident = fields[0]
        if "-" in ident or "." in ident:
            parts = ident.replace("-", ".").split(".")
            if len(parts) != 2 or not all(p.isdigit() for p in parts):
                raise DataFormatError(
                    f"{path}:{n}: bad ID {ident!r} (expected an integer, a range 3-4 or a decimal 8.1)."
                )
            continue
        if not ident.isdigit():
            raise DataFormatError(f"{path}:{n}: bad ID {ident!r} (expected an integer, a range 3-4 or a decimal 8.1).")
        words.append(fields[1])
        tags.append(fields[col])
    if words:
        sentences.append((words, tags))
    if not sentences:
        raise DataFormatError(f"{path}: no CoNLL-U word lines (the file is empty or holds only comments).")
    return sentences
