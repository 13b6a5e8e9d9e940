"""Data for sequence models: vocabularies, padding, one-hot inputs, file loaders.

The lecture's recipe: lower-case every word, reserve ``<sos>``, ``<eos>`` and ``<pad>``,
give every word an id, pad sentences to a common length, and represent each word by a
1-hot vector (``recurrax.one_hot``) or, equivalently and cheaper, by an embedding row
(``recurrax.Embedding``).
"""

from recurrax.data._loaders import DataFormatError, load_conllu, load_tsv
from recurrax.data._text import Vocab, length_mask, pad_batch, tokenize

__all__ = ["DataFormatError", "Vocab", "length_mask", "load_conllu", "load_tsv", "pad_batch", "tokenize"]
