"""A small transformer encoder trained on :func:`make_sentiment`: the deciding words are known, so AttnLRP,
CP-LRP, gradient × input and attention rollout can be compared on a model that has learned the rule.

Why this architecture: it is a ViT/BERT block in miniature, written with the plain torch ops people write
(``nn.Linear`` projections, ``matmul``, ``softmax``, ``nn.LayerNorm``, GELU), so explaining it exercises what
the transformers users explain are made of: a class token (a parameter concatenated before the words),
learned position embeddings, pre-norm blocks of multi-head self-attention and a GELU MLP with residual
adds, a final layer norm and a linear head on the class token. Padding keys are masked out of the attention
(``scaled_dot_product_attention`` with a boolean mask: the keys whose vector is not zero; padding embeds to
the zero vector), so padding never changes a prediction, and a word deleted by zeroing its vector is gone. Trains in seconds on a CPU, deterministically (fixed seeds, one thread).

torch is imported inside the functions: ``attribx.datasets`` imports without it.
"""
from __future__ import annotations

import math
from functools import cache
from typing import Any

from .sentiment import SentimentData
from .text_model import TrainHistory, _torch, fit_classifier


@cache
def _model_class():
    """The nn.Module class, defined on first use so that importing this module needs no torch."""
    torch = _torch()
    nn, F = torch.nn, torch.nn.functional

    class SelfAttention(nn.Module):
        """Multi-head self-attention with a key padding mask, written out (q, k, v projections, SDPA)."""

        def __init__(self, width: int, heads: int):
            super().__init__()
            self.heads = heads
            self.q, self.k, self.v, self.out = (nn.Linear(width, width) for _ in range(4))

        def forward(self, h, keep):
            n, t, e = h.shape
            split = [f(h).reshape(n, t, self.heads, e // self.heads).transpose(1, 2) for f in (self.q, self.k, self.v)]
            ctx = F.scaled_dot_product_attention(*split, attn_mask=keep.unsqueeze(1).unsqueeze(1))
            return self.out(ctx.transpose(1, 2).reshape(n, t, e))

    class Block(nn.Module):
        """Pre-norm encoder block: h + attention(LN(h)), then h + MLP(LN(h)) with a GELU."""

        def __init__(self, width: int, heads: int, hidden: int):
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
            self.attention = SelfAttention(width, heads)
            self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

        def forward(self, h, keep):
            h = h + self.attention(self.norm1(h), keep)
            return h + self.mlp(self.norm2(h))

    class SentimentTransformer(nn.Module):
        """Embedding + class token + positions -> blocks -> LayerNorm -> linear head on the class token."""

        def __init__(self, vocab_size: int, pad_id: int = 0, width: int = 32, heads: int = 2, hidden: int = 64,
                     layers: int = 2, max_len: int = 64, classes: int = 2):
            super().__init__()
            self.pad_id = pad_id
            self.embedding = nn.Embedding(vocab_size, width, padding_idx=pad_id)
            self.cls = nn.Parameter(torch.randn(1, 1, width) / math.sqrt(width))
            self.positions = nn.Parameter(torch.randn(1, max_len + 1, width))   # as strong as the words
            self.blocks = nn.ModuleList(Block(width, heads, hidden) for _ in range(layers))
            self.norm = nn.LayerNorm(width)
            self.head = nn.Linear(width, classes)

        def forward(self, ids):
            return self.encode(self.embedding(ids))

        def encode(self, vectors):
            """The class scores from the embedded words (N, T, E); padding is the zero vector (the embedding's
            ``padding_idx`` row), so the keys that are words are the non-zero vectors, the class token's too."""
            h = torch.cat([self.cls.expand(vectors.shape[0], -1, -1), vectors], dim=1)
            keep = (h != 0).any(dim=-1)
            h = h + self.positions[:, :h.shape[1]]
            for block in self.blocks:
                h = block(h, keep)
            return self.head(self.norm(h)[:, 0])

    class EmbeddedSentimentTransformer(nn.Module):
        """The same model from the embedded vectors (N, T, E) on (shares its weights)."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, vectors):
            return self.model.encode(vectors)

    for cls in (SelfAttention, Block, SentimentTransformer, EmbeddedSentimentTransformer):
        cls.__module__, cls.__qualname__ = __name__, cls.__name__
    return SentimentTransformer, EmbeddedSentimentTransformer


def build_sentiment_transformer(vocab_size: int, pad_id: int = 0, width: int = 32, heads: int = 2,
                                hidden: int = 64, layers: int = 2, max_len: int = 64, classes: int = 2,
                                seed: int = 0):
    """An untrained :class:`SentimentTransformer` (a ``torch.nn.Module``) with weights drawn from ``seed``."""
    torch = _torch()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _model_class()[0](vocab_size, pad_id, width, heads, hidden, layers, max_len, classes)


def train_sentiment_transformer(data: SentimentData, epochs: int = 20, seed: int = 0, *, width: int = 32,
                                heads: int = 4, hidden: int = 64, layers: int = 2, batch_size: int = 32,
                                lr: float = 3e-3, progress_bar: bool | None = None) -> tuple[Any, TrainHistory]:
    """Train a :class:`SentimentTransformer` on ``data``; returns ``(model, history)`` as
    :func:`~attribx.datasets.train_sentiment_lstm` does (same optimiser and determinism)."""
    model = build_sentiment_transformer(len(data.vocab), data.pad_id, width, heads, hidden, layers,
                                        max(64, data.ids.shape[1]), int(data.labels.max()) + 1, seed)
    return fit_classifier(model, data, epochs, seed, batch_size, lr, "train sentiment transformer", progress_bar)


def embedded_transformer(model, ids):
    """``(head, vectors)``: the transformer from its embedding's output on, and ``ids`` embedded (float32
    numpy), for the methods that need real input (gradient × input, integrated gradients)."""
    torch = _torch()
    with torch.no_grad():
        vectors = model.embedding(torch.from_numpy(ids.astype("int64"))).numpy()
    return _model_class()[1](model).eval(), vectors
