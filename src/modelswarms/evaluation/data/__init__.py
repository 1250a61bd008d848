"""Task data: items from files, presets and the OLMo request files, Hugging Face datasets, and
the prompts built from them. Below the engine and the objectives; imports neither."""
