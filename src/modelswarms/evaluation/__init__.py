"""Evaluation, in three layers: data (items and prompts), engine (the model and its scoring
primitives), objectives (utilities); evaluator.py and ray_pool.py, the evaluator seam, sit
on top of all three."""
