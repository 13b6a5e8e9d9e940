"""Synthetic sequence tasks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _int(name: str, value, lo: int, hi: float = float("inf"), why: str = "") -> int:
    """``value`` as an int in ``[lo, hi]`` (bools and floats are refused, not truncated)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        bound = f"in [{lo}, {hi}]" if hi != float("inf") else f">= {lo}"
        raise ValueError(f"{name} must be an int {bound}{why}; got {value!r}.")
    return int(value)


def _rng(key) -> np.random.Generator:
    """A NumPy generator determined by a JAX key (or an int seed), for the text tasks."""
    if isinstance(key, (int, np.integer)):
        return np.random.default_rng(int(key))
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


def adding_problem(key, batch_size: int, seq_len: int):
    """The adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015; Arjovsky et al. 2016).

    Each step has two features: a value ``U[0, 1]`` and a marker. Exactly two markers are
    1, one in each half of the sequence; the target is the sum of the two marked values.
    Predicting the mean (1.0) scores MSE ``Var(u1 + u2) = 1/6 = 0.167``: to beat it the
    model must remember a value over up to ``seq_len`` steps.

    Args:
      key: a ``jax.random`` key.
      batch_size: ``B``.
      seq_len: ``T`` (at least 2).

    Returns:
      ``(xs [B, T, 2] float32, y [B] float32)``.

    Example:
      >>> import jax, recurrax
      >>> xs, y = recurrax.tasks.adding_problem(jax.random.key(0), 4, 10)
      >>> xs.shape, y.shape, xs[..., 1].sum(axis=1).tolist()
      ((4, 10, 2), (4,), [2.0, 2.0, 2.0, 2.0])
    """
    batch_size, seq_len = _int("batch_size", batch_size, 0), _int("seq_len", seq_len, 2, why=" (a marker in each half)")
    kv, k1, k2 = jax.random.split(key, 3)
    values = jax.random.uniform(kv, (batch_size, seq_len))
    half = seq_len // 2
    first = jax.random.randint(k1, (batch_size,), 0, half)
    second = jax.random.randint(k2, (batch_size,), half, seq_len)
    t = jnp.arange(seq_len)[None, :]
    markers = ((t == first[:, None]) | (t == second[:, None])).astype(jnp.float32)
    return jnp.stack([values, markers], axis=-1), jnp.sum(values * markers, axis=1)


def copy_memory(key, batch_size: int, delay: int, *, num_symbols: int = 8, length: int = 10):
    """The copy-memory task (Arjovsky et al. 2016): recall ``length`` symbols after ``delay`` steps.

    Input ids: ``length`` symbols from ``1..num_symbols``, ``delay - 1`` blanks (0), the
    delimiter ``num_symbols + 1``, then ``length`` blanks. Target ids: blanks, and the
    symbols in the last ``length`` steps. A memoryless model scores cross-entropy
    ``length * log(num_symbols) / (delay + 2 * length)`` per step.

    Returns:
      ``(inputs [B, L] int32, targets [B, L] int32)`` with ``L = delay + 2 * length``; feed
      ``recurrax.one_hot(inputs, num_symbols + 2)`` to a cell.

    Example:
      >>> import jax
      >>> from recurrax.tasks import copy_memory
      >>> inputs, targets = copy_memory(jax.random.key(0), 2, delay=3, num_symbols=4, length=2)
      >>> inputs.shape, bool((inputs[:, 4] == 5).all()), bool((targets[:, -2:] == inputs[:, :2]).all())
      ((2, 7), True, True)
    """
    batch_size, delay = _int("batch_size", batch_size, 0), _int("delay", delay, 1)
    # num_symbols = 0 would draw the delimiter's id as a symbol, and length = 0 leaves nothing to recall
    num_symbols, length = _int("num_symbols", num_symbols, 1), _int("length", length, 1)
    symbols = jax.random.randint(key, (batch_size, length), 1, num_symbols + 1)
    blanks = jnp.zeros((batch_size, delay - 1), jnp.int32)
    delim = jnp.full((batch_size, 1), num_symbols + 1, jnp.int32)
    tail = jnp.zeros((batch_size, length), jnp.int32)
    inputs = jnp.concatenate([symbols, blanks, delim, tail], axis=1)
    targets = jnp.concatenate([jnp.zeros((batch_size, delay + length), jnp.int32), symbols], axis=1)
    return inputs, targets


_SUBJECTS = ["the movie", "the film", "the plot", "the acting", "the music", "the ending", "this show"]
_CONTEXT = ["the trailer", "the poster", "the book", "the first half", "the cast list"]
_VERBS = ["was", "is", "seemed", "felt"]
_INTENSIFIERS = ["very", "really", "truly", "quite"]
_POSITIVE = ["good", "great", "awesome", "amazing", "fun", "brilliant"]
_NEGATIVE = ["bad", "boring", "awful", "dull", "terrible", "weak"]


def polarity_task(key, n: int):
    """Sentence polarity from a small grammar where context decides the label.

    ``[<distractor clause> but] <subject> <verb> [not] [<intensifier>] <adjective>``: the
    label is the adjective's polarity, flipped by ``not``; the optional first clause has a
    random polarity and does not count. A bag of words cannot solve it: "not good" and
    "good" share the sentiment word, and the distractor carries sentiment words too.

    Returns:
      ``(sentences, labels)``: lists of token lists and an ``int32`` array ``[n]`` (1 positive).

    Example:
      >>> import recurrax
      >>> sentences, labels = recurrax.tasks.polarity_task(0, 3)
      >>> len(sentences), labels.shape
      (3, (3,))
    """
    rng = _rng(key)
    sentences, labels = [], []
    for _ in range(_int("n", n, 0)):
        positive, negated = rng.random() < 0.5, rng.random() < 0.5
        words = []
        if rng.random() < 0.5:
            adj = rng.choice(_POSITIVE if rng.random() < 0.5 else _NEGATIVE)
            words += f"{rng.choice(_CONTEXT)} {rng.choice(_VERBS)} {adj} but".split()
        words += f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)}".split()
        if negated:
            words.append("not")
        if rng.random() < 0.5:
            words.append(str(rng.choice(_INTENSIFIERS)))
        words.append(str(rng.choice(_POSITIVE if positive else _NEGATIVE)))
        sentences.append([str(w) for w in words])
        labels.append(int(positive != negated))
    return sentences, np.array(labels, np.int32)


_AMBIGUOUS = ["bank", "book", "watch", "park", "fish"]  # each a NOUN or a VERB by context
_PRONOUNS = ["i", "we", "they", "you"]
_DETS = ["the", "a", "my", "our"]
_ADJS = ["closed", "new", "old", "busy", "quiet"]
_OBJECTS = ["money", "car", "tickets", "flight", "table"]
_PLACES = ["river", "lake", "corner", "station"]
_ADVS = ["here", "there", "often", "today"]


def bank_tagging_task(key, n: int):
    """POS tagging where ambiguous words ("bank", "book", "watch", ...) need context.

    The lecture's example: "bank" may be a noun or a verb. Here each sentence holds one
    ambiguous word whose tag is NOUN after a determiner ("the bank was closed", "we
    walked to the bank") and VERB after a pronoun or auxiliary ("we bank here", "they
    will book the flight"). Every other word has a single tag.

    Returns:
      ``(sentences, tags)``: lists of token lists and of tag lists (UPOS names).

    Example:
      >>> import recurrax
      >>> words, tags = recurrax.tasks.bank_tagging_task(1, 2)
      >>> all(len(w) == len(t) for w, t in zip(words, tags))
      True
    """
    rng = _rng(key)
    c = lambda options: str(rng.choice(options))
    templates = [
        lambda a: ([c(_DETS), a, c(["is", "was"]), c(_ADJS)], ["DET", "NOUN", "AUX", "ADJ"]),
        lambda a: ([c(_PRONOUNS), c(["saw", "liked", "found"]), c(_DETS), a], ["PRON", "VERB", "DET", "NOUN"]),
        lambda a: ([c(_PRONOUNS), "walked", "to", c(_DETS), a], ["PRON", "VERB", "ADP", "DET", "NOUN"]),
        lambda a: ([c(_PRONOUNS), a, c(_ADVS)], ["PRON", "VERB", "ADV"]),
        lambda a: ([c(_PRONOUNS), "will", a, c(_DETS), c(_OBJECTS)], ["PRON", "AUX", "VERB", "DET", "NOUN"]),
        lambda a: ([c(_PRONOUNS), a, "at", c(_DETS), c(_PLACES)], ["PRON", "VERB", "ADP", "DET", "NOUN"]),
    ]
    sentences, tags = [], []
    for _ in range(_int("n", n, 0)):
        words, t = templates[rng.integers(len(templates))](c(_AMBIGUOUS))
        sentences.append(words)
        tags.append(t)
    return sentences, tags


_ONES = "zero one two three four five six seven eight nine".split()
_TEENS = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_to_words(k: int) -> list[str]:
    """English words for ``0 <= k < 1000``.

    Example:
      >>> from recurrax.tasks import number_to_words
      >>> number_to_words(312), number_to_words(40), number_to_words(7)
      (['three', 'hundred', 'twelve'], ['forty'], ['seven'])
    """
    _int("k", k, 0, 999, why=" (number_to_words covers 0..999)")
    words = []
    hundreds, rest = divmod(k, 100)
    if hundreds:
        words += [_ONES[hundreds], "hundred"]
    if rest >= 20:
        words.append(_TENS[rest // 10])
        if rest % 10:
            words.append(_ONES[rest % 10])
    elif rest >= 10:
        words.append(_TEENS[rest - 10])
    elif rest or not hundreds:
        words.append(_ONES[rest])
    return words


def number_words_task(key, n: int, *, max_value: int = 999):
    """n to m generation: number words to digit strings ("three hundred twelve" -> "3 1 2").

    Input and output lengths differ (1-4 words to 1-3 digits), so it needs an
    encoder-decoder, like transliteration or translation.

    Returns:
      ``(sources, targets, values)``: word lists, digit-character lists, and the numbers.

    Example:
      >>> import jax
      >>> from recurrax.tasks import number_to_words, number_words_task
      >>> sources, targets, values = number_words_task(jax.random.key(0), 3)
      >>> all(s == number_to_words(int(v)) and t == list(str(int(v))) for s, t, v in zip(sources, targets, values))
      True
    """
    _int("max_value", max_value, 0, 999, why=" (number_to_words covers 0..999)")
    rng = _rng(key)
    values = rng.integers(0, max_value + 1, _int("n", n, 0))
    return [number_to_words(int(v)) for v in values], [list(str(int(v))) for v in values], values
