"""Small generated data sets whose ground truth is known, for testing explanations (numpy only)."""
from __future__ import annotations

from .sentiment import SentimentData, make_sentiment

__all__ = ["SentimentData", "make_sentiment"]
