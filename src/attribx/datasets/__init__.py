"""Small generated data sets whose ground truth is known, for testing explanations (numpy only; the text
model's training functions import torch when called)."""
from __future__ import annotations

from .sentiment import SentimentData, make_sentiment
from .text_model import TrainHistory, build_sentiment_lstm, embedded, predict, train_sentiment_lstm

__all__ = ["SentimentData", "make_sentiment", "TrainHistory", "build_sentiment_lstm", "train_sentiment_lstm", "embedded", "predict"]
