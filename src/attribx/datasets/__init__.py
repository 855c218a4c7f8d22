"""Small generated data sets whose ground truth is known, for testing explanations (numpy only; the
models' training functions import torch, and the digits scikit-learn, when called)."""
from __future__ import annotations

from .digits import build_digits_cnn, load_digits_images, train_digits_cnn
from .sentiment import SentimentData, make_sentiment
from .text_model import TrainHistory, build_sentiment_lstm, embedded, predict, train_sentiment_lstm
from .text_transformer import build_sentiment_transformer, embedded_transformer, train_sentiment_transformer

__all__ = ["load_digits_images", "build_digits_cnn", "train_digits_cnn", "SentimentData", "make_sentiment",
           "TrainHistory", "build_sentiment_lstm", "train_sentiment_lstm", "embedded", "predict",
           "build_sentiment_transformer", "train_sentiment_transformer", "embedded_transformer"]
