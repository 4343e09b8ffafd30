"""Ranking: pure metrics and the full-ranking protocol shared by training and evaluation."""
