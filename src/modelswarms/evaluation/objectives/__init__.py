"""Objectives: the utility registry and every utility (multiple choice, exact match, reward
models, judges, multitask, lm-eval tasks), pure functions of (model, tokenizer, items) that
score through the engine.

The built-in utilities register themselves (and their configs, which `utility:` in a config
is checked against) when their modules load; loading them here makes them known to any code
that imports modelswarms.
"""

from . import abstain, judges, lm_eval_tasks, multitask, reward, utilities  # noqa: F401
