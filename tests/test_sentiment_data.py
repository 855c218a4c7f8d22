"""The generated sentiment data: deterministic, padded, labelled by its rule, deciding words marked."""
from __future__ import annotations

import numpy as np
import pytest

from attribx import InputError
from attribx.datasets import make_sentiment

# written out here, not imported: a change of the vocabulary changes every saved model's token ids
POS = ["good", "great", "excellent", "wonderful", "brilliant", "superb", "enjoyable", "delightful"]
NEG = ["bad", "awful", "terrible", "boring", "dull", "poor", "horrible", "tedious"]
NOT = ["not", "never"]
VOCAB = (["<pad>"] + POS + NEG + NOT + ["very", "really", "quite", "so"]
         + ["the", "a", "movie", "film", "was", "is", "plot", "actors", "acting", "story", "ending", "script",
            "music", "director", "and", "but", "this", "it"])


def rule(words):
    """The label rule recomputed from the words: (sum of votes, which words decide)."""
    total, pending, deciding = 0, None, [False] * len(words)
    for i, w in enumerate(words):
        if w in NOT:
            assert pending is None, "two negations before a sentiment word"
            pending = i
        elif w in POS or w in NEG:
            vote = 1 if w in POS else -1
            if pending is not None:
                vote, deciding[pending], pending = -vote, True, None
            total += vote
            deciding[i] = True
    assert pending is None, "a negation flips nothing"
    return total, deciding


DATA = make_sentiment(400, seed=5)


def test_same_seed_same_data_other_seed_other_data():
    again = make_sentiment(400, seed=5)
    for field in ("ids", "lengths", "labels", "deciding"):
        np.testing.assert_array_equal(getattr(DATA, field), getattr(again, field))
    assert DATA.tokens == again.tokens
    assert not np.array_equal(make_sentiment(400, seed=6).ids, DATA.ids)


def test_shapes_dtypes_and_right_padding():
    d = make_sentiment(50, seed=1, min_len=3, max_len=9)
    assert d.ids.shape == d.deciding.shape == (50, 9) and len(d) == 50
    assert d.ids.dtype == d.lengths.dtype == d.labels.dtype == np.int64 and d.deciding.dtype == bool
    assert d.lengths.min() >= 3 and d.lengths.max() <= 9
    for i, words in enumerate(d.tokens):
        assert len(words) == d.lengths[i]
        assert [d.vocab[t] for t in d.ids[i, :len(words)]] == words
        assert d.pad_id == 0 and (d.ids[i, len(words):] == 0).all() and (d.ids[i, :len(words)] != 0).all()
        assert not d.deciding[i, len(words):].any()
    assert d.token_text.shape == (50, 9) and (d.token_text[d.ids == 0] == "<pad>").all()


def test_labels_follow_the_rule_and_are_balanced():
    for words, y in zip(DATA.tokens, DATA.labels):
        total, _ = rule(words)
        assert total != 0 and y == (total > 0)
    assert DATA.labels.sum() == 200


def test_negations_occur_and_flip_the_word_they_precede():
    negated = [w for w in DATA.tokens if any(t in NOT for t in w)]
    assert len(negated) > 50
    assert any(len([t for t in w if t in POS + NEG]) >= 2 for w in DATA.tokens)
    flipped = 0
    for words, y in zip(DATA.tokens, DATA.labels):
        # read without negations, sentences whose rule sum changes sign exist: only order decides them
        plain = sum(1 if t in POS else -1 for t in words if t in POS + NEG)
        flipped += plain != 0 and (plain > 0) != bool(y)
    assert flipped > 10


def test_deciding_marks_exactly_the_sentiment_words_and_their_negations():
    for i, words in enumerate(DATA.tokens):
        _, deciding = rule(words)
        assert DATA.deciding[i, :len(words)].tolist() == deciding


def test_vocabulary_is_fixed():
    assert DATA.vocab == VOCAB
    assert make_sentiment(3, seed=9, negation_rate=0).vocab == VOCAB


def test_without_negation_a_bag_of_words_learns_it():
    sk = pytest.importorskip("sklearn.linear_model")
    d = make_sentiment(2000, seed=0, negation_rate=0.0)
    assert not np.isin(d.ids, [VOCAB.index(w) for w in NOT]).any()
    counts = np.stack([np.bincount(row, minlength=len(d.vocab)) for row in d.ids])[:, 1:]
    model = sk.LogisticRegression(max_iter=1000).fit(counts[:1500], d.labels[:1500])
    assert model.score(counts[1500:], d.labels[1500:]) > 0.9


def test_bad_arguments():
    for kwargs in ({"min_len": 0}, {"min_len": 5, "max_len": 4}, {"negation_rate": 1.5}, {"max_sentiment": 0}):
        with pytest.raises(InputError):
            make_sentiment(10, **kwargs)
