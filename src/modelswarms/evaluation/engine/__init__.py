"""The engine: one resident model, particles swapped in place, batched log-likelihoods and
greedy generation, the frozen trunk, several particles per forward. Knows nothing of
utilities."""
