"""Evaluation: pure ranking metrics, full-ranking evaluation, the blessing."""
