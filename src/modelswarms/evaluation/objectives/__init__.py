"""Objectives: the utility registry and every utility (multiple choice, exact match, reward
models, judges, multitask, lm-eval tasks), pure functions of (model, tokenizer, items) that
score through the engine."""
