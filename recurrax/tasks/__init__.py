"""Tasks generated from a PRNG key (no downloads), one per problem type of the lecture.

- n inputs, 1 output (classification): :func:`adding_problem` (regression on a long lag),
  :func:`polarity_task` (sentence polarity where context decides: "not good");
- n to n (labelling): :func:`copy_memory` (per-step labels after a long delay),
  :func:`bank_tagging_task` (POS tags of words like "bank" that depend on context);
- n to m (generation): :func:`number_words_task` ("three hundred twelve" -> "312").
"""

from recurrax.tasks._synthetic import (
    adding_problem,
    bank_tagging_task,
    copy_memory,
    number_to_words,
    number_words_task,
    polarity_task,
)

__all__ = [
    "adding_problem",
    "bank_tagging_task",
    "copy_memory",
    "number_to_words",
    "number_words_task",
    "polarity_task",
]
