"""A generated sentiment data set whose deciding words are known.

Why: an explanation of a text model can be checked only where we know which words decide the label.
Real corpora do not say; this one does by construction. Sentences mix sentiment words, negations and
neutral filler from a fixed vocabulary, and the label follows one rule:

    each positive word counts +1, each negative word -1; a negation ("not", "never") flips the sign of
    the next sentiment word after it (a modifier such as "very" may stand between them);
    label 1 (positive) when the sum is > 0, 0 (negative) when it is < 0.

Only sentences with a non-zero sum are generated, so every label is clear. Sentences hold one to
``max_sentiment`` sentiment words, so some need counting ("good but dull and awful" is negative). Without
negation a bag of words decides the label; with it, word order does. ``deciding`` marks the sentiment
words and the negations that flip them: the words a faithful explanation should point at.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

PAD = "<pad>"
POSITIVE = ("good", "great", "excellent", "wonderful", "brilliant", "superb", "enjoyable", "delightful")
NEGATIVE = ("bad", "awful", "terrible", "boring", "dull", "poor", "horrible", "tedious")
NEGATIONS = ("not", "never")
#: neutral words that may stand between a negation and the word it flips ("not very good")
MODIFIERS = ("very", "really", "quite", "so")
FILLERS = ("the", "a", "movie", "film", "was", "is", "plot", "actors", "acting", "story", "ending",
           "script", "music", "director", "and", "but", "this", "it")
#: index 0 is the padding; the order never changes, so token ids mean the same in every data set
VOCAB = (PAD,) + POSITIVE + NEGATIVE + NEGATIONS + MODIFIERS + FILLERS
PAD_ID = 0

_INDEX = {w: i for i, w in enumerate(VOCAB)}


@dataclass
class SentimentData:
    """Sentences as right-padded token ids with their labels and the words that decide them."""

    ids: np.ndarray          # int64 (n, max_len), PAD_ID after each sentence's end
    lengths: np.ndarray      # int64 (n,)
    labels: np.ndarray       # int64 (n,): 1 positive, 0 negative
    vocab: list[str]         # vocab[0] == "<pad>"
    tokens: list[list[str]]  # each sentence's words, unpadded
    deciding: np.ndarray     # bool (n, max_len): sentiment words and the negations that flip them
    pad_id: int = PAD_ID

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def token_text(self) -> np.ndarray:
        """The words as a padded (n, max_len) array of str ("<pad>" after the end), for ``explain(tokens=)``."""
        return np.asarray(self.vocab)[self.ids]


def _clause(rng, negation_rate: float) -> tuple[list[str], int]:
    """One sentiment word, perhaps negated: its words and its signed vote."""
    vote = 1 if rng.random() < 0.5 else -1
    words = [_pick(rng, POSITIVE if vote > 0 else NEGATIVE)]
    if rng.random() < negation_rate:
        between = [_pick(rng, MODIFIERS)] if rng.random() < 0.3 else []
        words = [_pick(rng, NEGATIONS)] + between + words
        vote = -vote
    return words, vote


def _pick(rng, words: tuple[str, ...]) -> str:
    return words[int(rng.integers(len(words)))]


def _opposite(word: str) -> str:
    """The word of the other polarity at the same place in its list (flips a clause's vote)."""
    if word in POSITIVE:
        return NEGATIVE[POSITIVE.index(word)]
    if word in NEGATIVE:
        return POSITIVE[NEGATIVE.index(word)]
    return word


def _sentence(rng, label: int, length: int, negation_rate: float, max_sentiment: int) -> list[str]:
    """``length`` words whose rule gives ``label``: clauses and fillers in random order."""
    while True:
        k = int(rng.integers(1, min(max_sentiment, length) + 1))
        clauses = [_clause(rng, negation_rate) for _ in range(k)]
        total = sum(vote for _, vote in clauses)
        if total == 0 or sum(len(w) for w, _ in clauses) > length:
            continue
        units = [words for words, _ in clauses]
        if (total > 0) != (label == 1):          # mirror every sentiment word: the sum changes sign
            units = [[_opposite(w) for w in words] for words in units]
        units += [[_pick(rng, FILLERS + MODIFIERS)] for _ in range(length - sum(map(len, units)))]
        return [w for i in rng.permutation(len(units)) for w in units[i]]


def make_sentiment(n: int, seed: int = 0, min_len: int = 4, max_len: int = 12, negation_rate: float = 0.3,
                   max_sentiment: int = 3) -> SentimentData:
    """``n`` generated sentences, half positive and half negative, the same for the same arguments.

    Lengths are uniform in ``[min_len, max_len]``; each sentiment word is negated with probability
    ``negation_rate`` (0: a bag-of-words task); a sentence holds 1 to ``max_sentiment`` sentiment words.
    """
    if n < 0 or not 1 <= min_len <= max_len:
        raise InputError(f"need n >= 0 and 1 <= min_len <= max_len, got n={n}, min_len={min_len}, "
                         f"max_len={max_len}")
    if not 0 <= negation_rate <= 1 or max_sentiment < 1:
        raise InputError(f"need 0 <= negation_rate <= 1 and max_sentiment >= 1, got {negation_rate}, "
                         f"{max_sentiment}")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(n) % 2
    tokens = [_sentence(rng, int(y), int(rng.integers(min_len, max_len + 1)), negation_rate, max_sentiment)
              for y in labels]
    ids = np.full((n, max_len), PAD_ID, np.int64)
    deciding = np.zeros((n, max_len), bool)
    for i, words in enumerate(tokens):
        ids[i, :len(words)] = [_INDEX[w] for w in words]
        deciding[i, :len(words)] = [w in POSITIVE or w in NEGATIVE or w in NEGATIONS for w in words]
    return SentimentData(ids=ids, lengths=np.array([len(t) for t in tokens], np.int64),
                         labels=labels.astype(np.int64), vocab=list(VOCAB), tokens=tokens, deciding=deciding)
