"""Data for sequence models: vocabularies, padding, one-hot inputs, file loaders.

The lecture's recipe: lower-case every word, reserve ``<sos>``, ``<eos>`` and ``<pad>``,
give every word an id, pad sentences to a common length, and represent each word by a
1-hot vector (``recurrax.one_hot``) or, equivalently and cheaper, by an embedding row
(``recurrax.Embedding``).
"""

from recurrax.data._loaders import DataFormatError
from recurrax.data._loaders import load_conllu
from recurrax.data._loaders import load_tsv
from recurrax.data._text import Vocab
from recurrax.data._text import length_mask
from recurrax.data._text import pad_batch
from recurrax.data._text import tokenize

__all__ = ["DataFormatError", "Vocab", "length_mask", "load_conllu", "load_tsv", "pad_batch", "tokenize"]
