"""The four multi-task domain presets (`data.preset`): the paper's legal, medical, science and
culture domains from the Model Swarms data files, MMLU subsets picked by subject."""

_MEDICAL = ("anatomy", "clinical_knowledge", "college_medicine", "medical_genetics",
            "nutrition", "professional_medicine", "virology")
_SCIENCE = ("astronomy", "college_biology", "college_chemistry", "college_physics",
            "conceptual_physics", "high_school_biology", "high_school_chemistry",
            "high_school_physics")
_CULTURE = ("global_facts", "high_school_geography", "high_school_world_history", "prehistory",
            "sociology", "world_religions")

# preset -> task -> (file in data.root, MMLU subjects to keep or None for all items)
PRESETS: dict[str, dict[str, tuple[str, tuple[str, ...] | None]]] = {
    "legal": {"hearsay": ("hearsay.json", None),
              "citation": ("citation_prediction_classification.json", None)},
    "medical": {"medqa": ("medqa.json", None), "mmlu_medical": ("mmlu.json", _MEDICAL)},
    "science": {"scifact": ("scifact.json", None), "mmlu_science": ("mmlu.json", _SCIENCE)},
    "culture": {"truthfulqa": ("truthfulqa.json", None),
                "mmlu_culture": ("mmlu.json", _CULTURE)},
}
