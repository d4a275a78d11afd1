"""Scoring a fitted model: metrics, the evaluation pass, report and pictures."""
