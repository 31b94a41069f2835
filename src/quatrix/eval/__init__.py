"""Evaluation: metrics and evaluators."""
