"""Vocabulary, tokenisation and padding."""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable, Sequence

import jax.numpy as jnp
import numpy as np

_TOKEN = re.compile(r"\w+(?:'\w+)?|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Split ``text`` into words and punctuation marks (lower-casing is the Vocab's job).

    Example:
      >>> from recurrax.data import tokenize
      >>> tokenize("The first half was very boring.")
      ['The', 'first', 'half', 'was', 'very', 'boring', '.']
    """
    return _TOKEN.findall(text)


class Vocab:
    """Token <-> id mapping with the lecture's reserved tokens.

    With ``reserved=True`` (for words) the ids are ``<unk>`` = 0, ``<sos>`` = 1,
    ``<eos>`` = 2, ``<pad>`` = 3, as in the lecture's table (``<sos>`` 1, ``<eos>`` 2,
    ``<pad>`` 3, then the words from 4), plus ``<unk>`` for words never seen. With
    ``reserved=False`` (for label sets such as POS tags) ids start at 0 and unknown
    tokens raise.

    Args:
      tokens: the tokens to add, in id order (duplicates are ignored).
      lower: lower-case every token on the way in (the lecture's first step).
      reserved: reserve the four special tokens.

    Example:
      >>> from recurrax.data import Vocab
      >>> v = Vocab.build([["The", "first", "half"], ["The", "movie"]])
      >>> v.encode(["the", "movie", "rocks"], add_sos=True, add_eos=True)
      [1, 4, 7, 0, 2]
      >>> v.decode([1, 4, 7, 2, 3, 3])
      ['the', 'movie']
    """

    UNK, SOS, EOS, PAD = "<unk>", "<sos>", "<eos>", "<pad>"

    def __init__(self, tokens: Iterable[str] = (), *, lower: bool = True, reserved: bool = True):
        self.lower, self.reserved = lower, reserved
        self._itos: list[str] = []
        self._stoi: dict[str, int] = {}
        for t in (self.UNK, self.SOS, self.EOS, self.PAD) if reserved else ():
            self._add(t)
        for t in tokens:
            self._add(self._norm(t))

    @classmethod
    def build(cls, corpus: Iterable[Sequence[str]], *, min_freq: int = 1, max_size: int | None = None,
              lower: bool = True, reserved: bool = True) -> Vocab:
        """A vocabulary of the tokens of ``corpus`` seen at least ``min_freq`` times.

        Tokens are ordered by frequency (most frequent first, ties by first appearance);
        ``max_size`` caps the number of non-reserved tokens.
        """
        counts = collections.Counter()
        for sentence in corpus:
            counts.update(t.lower() if lower else t for t in sentence)
        ranked = [t for t, c in counts.most_common() if c >= min_freq]
        return cls(ranked[:max_size], lower=lower, reserved=reserved)

    def _norm(self, token: str) -> str:
        return token.lower() if self.lower else token

    def _add(self, token: str) -> None:
        if token not in self._stoi:
            self._stoi[token] = len(self._itos)
            self._itos.append(token)

    def __len__(self) -> int:
        return len(self._itos)

    def __contains__(self, token: str) -> bool:
        return self._norm(token) in self._stoi

    @property
    def tokens(self) -> list[str]:
        return list(self._itos)

    @property
    def pad_id(self) -> int:
        return self._special(self.PAD)

    @property
    def sos_id(self) -> int:
        return self._special(self.SOS)

    @property
    def eos_id(self) -> int:
        return self._special(self.EOS)

    @property
    def unk_id(self) -> int:
        return self._special(self.UNK)

    def _special(self, token):
        if not self.reserved:
            raise ValueError(f"this Vocab has no reserved tokens (reserved=False), so no {token}.")
        return self._stoi[token]

    def id(self, token: str) -> int:
        """The id of ``token`` (``<unk>`` for unknown words when ``reserved``)."""
        token = self._norm(token)
        if token in self._stoi:
            return self._stoi[token]
        if self.reserved:
            return self._stoi[self.UNK]
        raise KeyError(f"{token!r} is not in this vocabulary of {len(self)} tokens (reserved=False).")

    def encode(self, tokens: Sequence[str], *, add_sos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids, optionally framed by ``<sos>`` and ``<eos>``."""
        ids = [self.id(t) for t in tokens]
        return ([self.sos_id] if add_sos else []) + ids + ([self.eos_id] if add_eos else [])

    def decode(self, ids: Iterable[int], *, strip: bool = True) -> list[str]:
        """Tokens of ``ids``; with ``strip`` (and reserved tokens), stop at ``<eos>`` and drop ``<sos>``/``<pad>``."""
        out = []
        for i in np.asarray(list(ids)).reshape(-1).tolist():
            if not 0 <= i < len(self):
                raise ValueError(f"id {i} is outside this vocabulary of {len(self)} tokens.")
            token = self._itos[i]
            if strip and self.reserved:
                if token == self.EOS:
                    break
                if token in (self.SOS, self.PAD):
                    continue
            out.append(token)
        return out


def pad_batch(sequences: Sequence, pad_value=0, *, max_len: int | None = None, dtype=None):
    """Pad sequences to a common length: ``(batch [B, T, ...], lengths [B])``.

    Works for token-id lists (``[T]`` each) and for real-valued frames (``[T, F]`` each,
    e.g. audio features or video frame embeddings). ``T`` is the longest length, or
    ``max_len`` (longer sequences then raise rather than being cut silently).

    Example:
      >>> from recurrax.data import pad_batch
      >>> batch, lengths = pad_batch([[1, 4, 5, 2], [1, 6, 2]], pad_value=3)
      >>> batch.tolist(), lengths.tolist()
      ([[1, 4, 5, 2], [1, 6, 2, 3]], [4, 3])
    """
    arrays = [np.asarray(s) if dtype is None else np.asarray(s, dtype) for s in sequences]
    if not arrays:
        raise ValueError("pad_batch needs at least one sequence.")
    tails = {a.shape[1:] for a in arrays}
    if len(tails) > 1:
        raise ValueError(f"every sequence must have the same per-step shape; got {sorted(tails)}.")
    lengths = np.array([len(a) for a in arrays], np.int32)
    T = int(lengths.max()) if max_len is None else max_len
    if lengths.max() > T:
        raise ValueError(f"a sequence of length {lengths.max()} does not fit max_len={T}; truncate it first.")
    batch = np.full((len(arrays), T, *arrays[0].shape[1:]), pad_value, dtype=np.result_type(*arrays))
    for b, a in enumerate(arrays):
        batch[b, : len(a)] = a
    return batch, lengths


def length_mask(lengths, T: int):
    """``mask[b, t] = t < lengths[b]``: ``[B]`` lengths to a ``[B, T]`` bool mask.

    Example:
      >>> from recurrax.data import length_mask
      >>> length_mask([2, 0], 3).tolist()
      [[True, True, False], [False, False, False]]
    """
    lengths = jnp.asarray(lengths)
    return jnp.arange(T)[None, :] < lengths[:, None]
