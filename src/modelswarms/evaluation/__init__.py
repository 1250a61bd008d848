"""Evaluation: task data, prompts, batched scoring, utilities and the resident model."""
