"""The engine: one resident model, particles swapped in place, batched log-likelihoods and
greedy generation, the frozen trunk, several particles per forward. Knows nothing of
utilities. transformers and peft are imported inside the functions that use them, so
`import modelswarms` and the CLI start without them (they take seconds to import)."""
