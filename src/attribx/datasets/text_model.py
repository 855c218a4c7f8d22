"""A small bidirectional LSTM trained on :func:`make_sentiment`, to check explanations of a real model.

Why: the generated sentences say which words decide each label, but checking an explanation against
them needs a model that has *learned* the rule (counting and negation), not one with random or
hand-set weights. This one trains in a few seconds on a CPU, deterministically (fixed seeds, one
thread), so tests and the demo can train it afresh instead of shipping weights.

The model is the plainest text classifier LRP is defined for (Arras et al. 2017): an embedding
(``padding_idx`` = the pad id, so padding is the zero vector), a bidirectional ``nn.LSTM`` with
``batch_first=True`` and no packing (the right-padded batch is read as it is; the model learns to
ignore the pad steps), and one linear layer on the two directions' final hidden states.

torch is imported inside the functions: ``attribx`` and ``attribx.datasets`` import without it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

from ..errors import AttribxError
from ..progress import progress
from .sentiment import SentimentData


def _torch():
    try:
        import torch
    except ImportError:
        raise AttribxError("the sentiment LSTM needs PyTorch: pip install 'attribx[torch]'") from None
    return torch


@dataclass
class TrainHistory:
    """What training did: the mean loss and training accuracy of each epoch, and the seconds it took."""

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0


@cache
def _model_class():
    """The nn.Module class, defined on first use so that importing this module needs no torch."""
    torch = _torch()
    cat, nn = torch.cat, torch.nn

    class SentimentLSTM(nn.Module):
        """Embedding -> bidirectional LSTM -> linear on the final hidden states [h_fwd, h_bwd]."""

        def __init__(self, vocab_size: int, pad_id: int = 0, embed: int = 16, hidden: int = 24,
                     classes: int = 2):
            super().__init__()
            self.embedding = nn.Embedding(vocab_size, embed, padding_idx=pad_id)
            self.lstm = nn.LSTM(embed, hidden, batch_first=True, bidirectional=True)
            self.out = nn.Linear(2 * hidden, classes)

        def forward(self, ids):
            _, (h, _) = self.lstm(self.embedding(ids))
            return self.out(cat([h[0], h[1]], dim=1))

    class EmbeddedSentimentLSTM(nn.Module):
        """The same model from the embedded vectors (N, T, E) on: shares the LSTM and head weights."""

        def __init__(self, model):
            super().__init__()
            self.lstm, self.out = model.lstm, model.out

        def forward(self, vectors):
            _, (h, _) = self.lstm(vectors)
            return self.out(cat([h[0], h[1]], dim=1))

    for cls in (SentimentLSTM, EmbeddedSentimentLSTM):
        cls.__module__, cls.__qualname__ = __name__, cls.__name__
    return SentimentLSTM, EmbeddedSentimentLSTM


def build_sentiment_lstm(vocab_size: int, pad_id: int = 0, embed: int = 16, hidden: int = 24,
                         classes: int = 2, seed: int = 0):
    """An untrained :class:`SentimentLSTM` (a ``torch.nn.Module``) with weights drawn from ``seed``."""
    torch = _torch()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _model_class()[0](vocab_size, pad_id, embed, hidden, classes)


def train_sentiment_lstm(data: SentimentData, epochs: int = 6, seed: int = 0, *, embed: int = 16,
                         hidden: int = 24, batch_size: int = 32, lr: float = 0.01,
                         progress_bar: bool | None = None) -> tuple[Any, TrainHistory]:
    """Train a bidirectional LSTM on ``data`` (from :func:`make_sentiment`); returns ``(model, history)``.

    Adam on the cross-entropy, mini-batches shuffled by ``seed``; the same arguments give the same
    weights (float32, CPU, one torch thread while training, the global torch RNG left as it was).
    The model is returned in eval mode. ``progress_bar``: a tqdm bar over the epochs (default: when
    stderr is a terminal and tqdm is installed).
    """
    model = build_sentiment_lstm(len(data.vocab), data.pad_id, embed, hidden, int(data.labels.max()) + 1, seed)
    return fit_classifier(model, data, epochs, seed, batch_size, lr, "train sentiment LSTM", progress_bar)


def fit_classifier(model, data: SentimentData, epochs: int, seed: int, batch_size: int, lr: float, what: str,
                   progress_bar: bool | None = None) -> tuple[Any, TrainHistory]:
    """Adam on the cross-entropy of ``model`` (token ids in, class scores out) over ``data``, mini-batches
    shuffled by ``seed``, gradients clipped at norm 5; one torch thread while training (deterministic sums),
    the model returned in eval mode with its :class:`TrainHistory`."""
    torch = _torch()
    start = time.perf_counter()
    ids = torch.from_numpy(np.ascontiguousarray(data.ids, dtype=np.int64))
    labels = torch.from_numpy(np.ascontiguousarray(data.labels, dtype=np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    order = np.random.default_rng(seed)
    history = TrainHistory()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # deterministic sums, and fair to a shared machine
    try:
        model.train()
        for _ in progress(range(epochs), epochs, what, progress_bar):
            perm = torch.from_numpy(order.permutation(len(labels)))
            total, right = 0.0, 0
            for i in range(0, len(perm), batch_size):
                idx = perm[i:i + batch_size]
                logits = model(ids[idx])
                loss = loss_fn(logits, labels[idx])
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                opt.step()
                total += float(loss.detach()) * len(idx)
                right += int((logits.argmax(1) == labels[idx]).sum())
            history.loss.append(total / len(labels))
            history.accuracy.append(right / len(labels))
    finally:
        torch.set_num_threads(threads)
    model.eval()
    history.seconds = time.perf_counter() - start
    return model, history


def embedded(model, ids: np.ndarray):
    """``(head, vectors)``: the model from its embedding's output on, and ``ids`` embedded (float32 numpy).

    Methods that need real input (``gradient_x_input``, ``integrated_gradients``) explain ``head`` at
    ``vectors`` with ``per_token=True``; LRP there equals LRP on the ids (the embedding passes the
    relevance of its vector to the id unchanged, summed).
    """
    torch = _torch()
    with torch.no_grad():
        vectors = model.embedding(torch.from_numpy(np.ascontiguousarray(ids, np.int64))).numpy()
    return _model_class()[1](model).eval(), vectors


def predict(model, ids: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """The model's class scores (logits) for token ids, as a numpy array."""
    torch = _torch()
    out = []
    with torch.no_grad():
        for i in range(0, len(ids), batch_size):
            out.append(model(torch.from_numpy(np.ascontiguousarray(ids[i:i + batch_size], np.int64))).numpy())
    return np.concatenate(out) if out else np.zeros((0, 2), np.float32)
