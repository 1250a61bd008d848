"""Frozen, validated run configuration: one source of truth for every default.

YAML in, pydantic out. Unknown keys and wrong types are errors that name the key; relative
paths are resolved against the config file's folder, so a config can travel with its data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError
from .models import EMBEDDED
from .trackers import TRACKERS  # the registry's names; the packages are checked at run


class StrictModel(BaseModel):
    # NaN and infinity are refused in every number of a config: a NaN merge weight once
    # wrote an all-NaN model and exited 0
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ExpertsConfig(StrictModel):
    paths: list[str] = Field(min_length=1, description="LoRA adapter folders or model folders")
    base_model: str | None = Field(
        None, description="Base model of LoRA experts (folder, hub id or 'smollm2'); "
        "default: the adapters' base_model_name_or_path")
    include: list[str] = Field(default_factory=list, description="globs of searched tensors")
    exclude: list[str] = Field(default_factory=list, description="globs of frozen tensors")
    trust_remote_code: bool = False
    compose: Literal["weights", "mixture"] = Field(
        "weights", description="weights: one architecture, particles are weights; mixture: "
        "experts of any architecture, particles are mixing weights of their next-token "
        "distributions (a token swarm)")


# `datasets` builders that read local files named in data_files (a path, not a hub id)
HF_BUILDERS = ("arrow", "csv", "json", "pandas", "parquet", "text", "xml")


class HFFields(StrictModel):
    """Our item field -> the dataset's column. A field left out is read from the column of
    its own name when there is one."""

    question: str | None = None
    choices: str | list[str] | None = Field(
        None, description="a column of options (a list, or ARC's {text, label}), or one "
        "column per option, e.g. [opa, opb, opc, opd]")
    answer: str | None = Field(None, description="the gold: an index, a letter or label, or "
                               "the option's text (multiple choice); the answer (exact match)")
    id: str | None = None
    prompt: str | None = Field(None, description="reward_model / human_interest prompts")


class HFDataConfig(StrictModel):
    """A dataset the Hugging Face `datasets` library loads (pip install 'modelswarms[datasets]');
    its rows are converted to our items once, when it is loaded."""

    path: str = Field(min_length=1, description="a hub id (cais/mmlu), a local folder (data "
                      "files, or one written by save_to_disk), or a builder for local files: "
                      + " | ".join(HF_BUILDERS))
    name: str | None = Field(None, description="the dataset's config name (e.g. 'all')")
    data_files: str | list[str] | dict[str, str | list[str]] | None = Field(
        None, description="files, or split -> files; relative to the config file when `path` "
        "is a builder, else to the dataset")
    revision: str | None = Field(None, description="a hub branch, tag or commit")
    fields: HFFields = HFFields()
    answer_format: Literal["auto", "index", "letter", "text"] = Field(
        "auto", description="how a multiple-choice gold is read; auto: the dataset's labels, "
        "else an integer is an index and a string whichever of index / letter / option text "
        "fits (an error when two fit and disagree)")
    index_base: Literal[0, 1] = Field(0, description="the first option's index (1: Winogrande)")

    @property
    def files(self) -> list[str]:
        """data_files as one list."""
        spec = self.data_files
        groups = list(spec.values()) if isinstance(spec, dict) else [spec] if spec else []
        return [f for g in groups for f in ([g] if isinstance(g, str) else g)]

    @property
    def label(self) -> str:
        if self.path in HF_BUILDERS:
            return ", ".join(Path(f).name for f in self.files) or self.path
        return self.path + (f" ({self.name})" if self.name else "")


class DataConfig(StrictModel):
    path: str | None = Field(None, description="JSON with dev/test lists, or JSONL")
    hf: HFDataConfig | None = Field(
        None, description="a Hugging Face dataset (hub id or local files), instead of path")
    tasks: dict[str, str] = Field(
        default_factory=dict, description="multi_task: task name -> its file, instead of path")
    preset: Literal["legal", "medical", "science", "culture"] | None = Field(
        None, description="multi_task: a domain of the paper, built from the files in `root`")
    root: str | None = Field(None, description="folder of the preset's files (the Model "
                             "Swarms data: mmlu.json, medqa.json, ...)")
    test_path: str | None = Field(None, description="JSONL test file when `path` holds dev only")
    dev_split: str = Field("dev", description="the dev split: a JSON key, a JSONL item's "
                           "split, or a Hugging Face split (often 'validation')")
    test_split: str = "test"
    max_dev: int | None = Field(None, ge=1)
    max_test: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        given = [k for k in ("path", "tasks", "preset", "hf") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of data.path, data.tasks, data.preset, data.hf "
                             f"(given: {', '.join(given) or 'none'})")
        if self.test_path and self.hf:
            raise ValueError("data.test_path goes with data.path; data.hf takes its test split "
                             "from data.test_split")
        if self.preset and not self.root:
            raise ValueError("data.preset needs data.root, the folder holding its files")
        return self

    @property
    def name(self) -> str:
        if self.hf:
            return self.hf.label
        return self.path or (f"preset {self.preset}" if self.preset else " + ".join(self.tasks))


class JudgeConfig(StrictModel):
    """An LLM that rates answers 1-10: a local Hugging Face chat model or any
    OpenAI-compatible chat-completions endpoint. The API key is never part of the config:
    `api_key_env` names the environment variable that holds it."""

    kind: Literal["endpoint", "local"] = "endpoint"
    model: str = Field(description="endpoint model name, or a local folder / hub id / smollm2")
    base_url: str | None = Field(None, description="endpoint base URL, e.g. http://host:8000/v1")
    api_key_env: str | None = Field(None, description="environment variable holding the key")
    concurrency: int = Field(8, ge=1, description="requests in flight at once")
    timeout: float = Field(60.0, gt=0, description="seconds per request")
    retries: int = Field(3, ge=0, description="retries after a failed or timed-out request")
    backoff: float = Field(1.0, ge=0, description="first retry delay in seconds; doubles")
    max_tokens: int = Field(64, ge=1, description="tokens the judge may write")
    cache_dir: str | None = Field(
        None, description="on-disk rating cache; default $MODELSWARMS_CACHE/judge")
    on_failure: Literal["exclude", "lowest", "error"] = Field(
        "exclude", description="a failed, timed-out or unparseable rating: left out of the "
        "mean, counted as the lowest rating, or stops the run; always counted in the report")
    template: str | None = Field(
        None, description="judge prompt with {topic}, {prompt}, {answer}")

    @model_validator(mode="after")
    def _endpoint_needs_url(self) -> JudgeConfig:
        if self.kind == "endpoint" and not self.base_url:
            raise ValueError("judge.base_url is required for an endpoint judge")
        return self


class RewardConfig(StrictModel):
    """A local Hugging Face sequence-classification reward model; its raw score r becomes
    clip((r - low) / (high - low), 0, 1). The variants mix in the answer's length
    l = new tokens / max_new_tokens: concise (1-w)*reward + w*(1 - l), verbose
    (1-w)*reward + w*l, reverse 1 - reward."""

    model: str = Field(description="folder or hub id of the reward model")
    variant: Literal["plain", "concise", "verbose", "reverse"] = "plain"
    low: float = Field(-5.0, description="raw reward mapped to 0")
    high: float = Field(5.0, description="raw reward mapped to 1")
    length_weight: float = Field(0.5, ge=0, le=1, description="w of concise / verbose")
    batch_size: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _range(self) -> RewardConfig:
        if self.high <= self.low:
            raise ValueError("reward.high must be greater than reward.low")
        return self


class EstimateConfig(StrictModel):
    """Fitness from fewer items (runs/estimate.py): candidates are scored on `items` anchor
    items of dev and their full-dev utility is estimated from them."""

    items: int = Field(ge=1, description="anchor items each candidate is scored on")
    method: Literal["anchor", "random"] = Field(
        "anchor", description="anchor: items stratified by clusters of the per-item "
        "correctness patterns of the candidates scored on full dev first (tinyBenchmarks' "
        "anchors, weighted by cluster size); random: a uniform random subset (a baseline)")


class _UtilityBase(StrictModel):
    estimate: EstimateConfig | None = Field(
        None, description="score candidates on a few dev items and estimate full-dev "
        "utility; the best is re-scored on full dev before it is reported or exported")
    on_invalid: Literal["stop", "worst"] = Field(
        "stop", description="a utility that returns NaN or infinity or raises: stop the run "
        "with a message naming it, or score that candidate -inf (never a best, the worst seen) "
        "and go on; counted as `invalid_utility` in the report either way")


class _PromptedUtility(_UtilityBase):
    """A utility that prompts the model: its template, chat turn and answer length."""

    chat_template: bool | None = Field(None, description="None: use it when the tokenizer has one")
    prompt: str | None = Field(None, description="prompt template override")
    max_new_tokens: int = Field(16, ge=1, description="length of a generated answer")


Scoring = Literal["letter", "cloze", "cloze_norm", "permuted", "generate"]
SCORING_HELP = (
    "multiple choice: the option letter's log-likelihood after the lettered list (letter); the "
    "option text's log-likelihood after the question, summed (cloze, lm-eval's acc) or per "
    "character (cloze_norm, lm-eval's acc_norm); letter scoring averaged over the cyclic "
    "rotations of the options (permuted: cancels a letter prior); or greedy generation parsed "
    "for a letter (generate, the paper's way)")


class _ChoiceScoring(_PromptedUtility):
    scoring: Scoring = Field("letter", description=SCORING_HELP)


class MultipleChoiceConfig(_ChoiceScoring):
    type: Literal["multiple_choice"] = "multiple_choice"


class ExactMatchConfig(_PromptedUtility):
    type: Literal["exact_match"]


class MultiTaskConfig(_ChoiceScoring):
    """The harmonic mean over tasks: multiple choice where items have choices, else exact
    match; `scoring` is the multiple-choice tasks'."""

    type: Literal["multi_task"]


class AbstainQAConfig(_ChoiceScoring):
    type: Literal["abstain_qa"]


class PythonUtilityConfig(_UtilityBase):
    type: Literal["python"]
    function: str = Field(pattern=r"^[^:\s]+:[^:\s]+$",
                          description="'module:function', called as fn(model, tokenizer, items)")


class HumanInterestConfig(_PromptedUtility):
    type: Literal["human_interest"]
    judge: JudgeConfig = Field(description="the LLM that rates the answers")
    topic: str = Field(min_length=1, description="the interest the judge rates for, e.g. "
                       "'finance'")


class RewardModelConfig(_PromptedUtility):
    type: Literal["reward_model"]
    reward: RewardConfig = Field(description="the reward model")


class CustomUtilityConfig(_PromptedUtility):
    """A utility of the user's: a name given to `register_utility`, or 'module:Class' (a class
    or factory called with this config). Its own settings go under `params`."""

    type: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict, description="the utility's settings")
    judge: JudgeConfig | None = Field(None, description="a rater, for judged utilities")


LmEvalSplit = Literal["auto", "train", "validation", "test"]


class LmEvalConfig(_UtilityBase):
    """Tasks of lm-evaluation-harness (pip install 'modelswarms[lm-eval]'): lm-eval turns each
    document into its prompt, options and target and computes the metric; our engine runs the
    model (evaluation/objectives/lm_eval_tasks.py). The tasks bring their documents: a run with this
    utility has no `data:` section."""

    type: Literal["lm_eval"]
    tasks: list[str] = Field(min_length=1, description="lm-eval task names (registered, or "
                             "defined in include_path) or task YAML files")
    include_path: list[str] = Field(
        default_factory=list, description="folders of your own task YAML files (lm-eval's "
        "include_path); relative to the config file")
    metric: str | dict[str, str] | None = Field(
        None, description="the metric maximised, for every task or per task: acc, acc_norm, "
        "acc_bytes, acc_mutual_info (multiple_choice), exact_match or another per-document "
        "mean (generate_until); default: each task's first metric")
    filter: str | None = Field(
        None, description="generate_until: the task's filter pipeline whose answer is scored "
        "(e.g. strict-match); default: its first")
    num_fewshot: int | None = Field(
        None, ge=0, description="few-shot examples; default: the task's own, else 0 (as in "
        "lm-eval, a task whose config says 0 stays at 0)")
    fewshot_seed: int = Field(1234, description="seed of lm-eval's few-shot sampler "
                              "(lm-eval's default)")
    dev_split: LmEvalSplit = Field(
        "auto", description="the task split the search scores; auto: validation, else "
        "train, else test")
    test_split: LmEvalSplit = Field(
        "auto", description="the split of the report's test scores; auto: test, else the "
        "documents of the dev split after the dev documents")
    max_dev: int | None = Field(None, ge=1, description="first documents of the dev split, "
                                "per task")
    max_test: int | None = Field(None, ge=1, description="first documents of the test split, "
                                 "per task")
    add_bos_token: bool | None = Field(
        None, description="lm-eval's add_bos_token: prepend BOS to every context; None: what "
        "the tokenizer does by default (as lm-eval)")

    @model_validator(mode="before")
    @classmethod
    def _one_path(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("include_path"), str):
            data = {**data, "include_path": [data["include_path"]]}
        return data

    @property
    def documents_name(self) -> str:
        """What the items are, for reports."""
        return "lm_eval " + ", ".join(Path(t).stem if t.endswith((".yaml", ".yml")) else t
                                      for t in self.tasks)

    def resolved(self, root: Path) -> LmEvalConfig:
        """include_path and task YAML files relative to `root` (the config's folder)."""
        def local(p: str) -> str:
            return str((root / Path(p).expanduser()).resolve())

        return self.model_copy(update={
            "include_path": [local(p) for p in self.include_path],
            "tasks": [local(t) if t.endswith((".yaml", ".yml")) else t for t in self.tasks]})


# utility types whose tasks bring their own documents: their runs take no `data:` section
OWN_DOCUMENTS = ("lm_eval",)


UTILITY_CONFIGS: dict[str, type[StrictModel]] = {
    "multiple_choice": MultipleChoiceConfig, "exact_match": ExactMatchConfig,
    "multi_task": MultiTaskConfig, "abstain_qa": AbstainQAConfig,
    "python": PythonUtilityConfig, "human_interest": HumanInterestConfig,
    "reward_model": RewardModelConfig, "lm_eval": LmEvalConfig,
}


def _utility_tag(value: Any) -> str:
    kind = value.get("type", "multiple_choice") if isinstance(value, dict) else \
        getattr(value, "type", "multiple_choice")
    # a type that is not text (a list, a mapping) is the custom config's to refuse by name
    return kind if isinstance(kind, str) and kind in UTILITY_CONFIGS else "custom"


# `utility:` is one of these, chosen by its `type`: a key that belongs to another utility
# (say `topic` on multiple_choice) is an unknown key, not silently ignored.
UtilityConfig = Annotated[
    Annotated[MultipleChoiceConfig, Tag("multiple_choice")]
    | Annotated[ExactMatchConfig, Tag("exact_match")]
    | Annotated[MultiTaskConfig, Tag("multi_task")]
    | Annotated[AbstainQAConfig, Tag("abstain_qa")]
    | Annotated[PythonUtilityConfig, Tag("python")]
    | Annotated[HumanInterestConfig, Tag("human_interest")]
    | Annotated[RewardModelConfig, Tag("reward_model")]
    | Annotated[LmEvalConfig, Tag("lm_eval")]
    | Annotated[CustomUtilityConfig, Tag("custom")],
    Discriminator(_utility_tag),
]
_UTILITY_ADAPTER: TypeAdapter[Any] = TypeAdapter(UtilityConfig)


def engine_config(source: str = "model", **fields: Any) -> ModelConfig:
    """A ModelConfig from keyword fields (a command's flags, an API call's arguments): its
    limits checked where they are declared, an error naming `source` and the key."""
    try:
        return ModelConfig.model_validate(fields)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source, prefix=("model",))) from None


def utility_config(**fields: Any) -> Any:
    """A utility config from keyword fields (`type` picks the kind; multiple_choice if none)."""
    try:
        return _UTILITY_ADAPTER.validate_python(fields)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, "utility config", prefix=("utility",))) from None


def as_utility(cfg: Any, kind: str, **update: Any) -> Any:
    """`cfg`'s shared settings under another utility type (a utility built from parts)."""
    target = UTILITY_CONFIGS.get(kind, CustomUtilityConfig)
    keep = {k: v for k, v in cfg.model_dump().items() if k in target.model_fields}
    return utility_config(**{**keep, "type": kind, **update})


class SwarmConfig(StrictModel):
    particles: int | None = Field(None, ge=2, description="grow the population to this size")
    inertia: float = Field(0.4, ge=0)
    cognitive: float = Field(0.3, ge=0)
    social: float = Field(0.3, ge=0)
    repel: float = Field(0.3, ge=0)
    use_repel: bool = True
    random_factors: bool = True
    step_length: float = Field(1.0, gt=0)
    step_decay: float = Field(0.95, gt=0, le=1)
    min_step: float = Field(0.1, ge=0)
    start_velocity: Literal["random", "zero", "best"] = "random"
    restart_patience: float = Field(0.5, gt=0, description="fraction of `patience`")
    restart_cooldown: int = Field(
        0, ge=0, description="extra iterations a restarted particle waits before it can restart")
    patience: int = Field(10, ge=1)
    max_iterations: int = Field(200, ge=0)
    dtype: Literal["float32", "float64", "bfloat16", "float16"] = "float32"

    @model_validator(mode="after")
    def _coefficients(self) -> SwarmConfig:
        total = self.inertia + self.cognitive + self.social + (self.repel if self.use_repel else 0)
        if total <= 0:
            raise ValueError("inertia + cognitive + social (+ repel) must be > 0")
        return self


class CoefficientSearchConfig(StrictModel):
    """CMA-ES and random search over merge coefficients: a candidate is sum_i c_i * expert_i
    (one c per expert, or per expert and layer), started at the uniform soup c_i = 1/n."""

    per_layer: bool = Field(False, description="one coefficient per expert and layer")
    sigma: float = Field(0.5, gt=0, description="CMA-ES step size, in units of 1/n")
    population: int | None = Field(None, ge=2, description="CMA-ES population (default: "
                                   "cma's 4 + 3 ln(dimension))")
    spread: float = Field(1.0, gt=0, description="random search: c_i ~ U(0, (1 + spread) / n)")
    max_iterations: int = Field(200, ge=1, description="generations / rounds of 10 draws")


class MergeSpec(StrictModel):
    """One merge: a method of the registry (modelswarms.merge), its parameters, weights."""

    method: str
    params: dict[str, Any] = Field(default_factory=dict)
    weights: list[float] | None = Field(None, description="per expert, in pool order")


class CompareConfig(StrictModel):
    methods: list[str] = Field(
        default_factory=lambda: ["base", "experts", "best_expert", "linear",
                                 "task_arithmetic", "ties", "dare_ties", "model_stock",
                                 "greedy_soup", "expert_vote", "logit_average", "random",
                                 "cmaes", "swarm"],
        description="rows: base, experts, best_expert, expert_vote, logit_average, any merge "
        "method, and the strategies swarm, cmaes, random, greedy_soup")
    merge_params: dict[str, dict[str, Any]] = Field(
        # the papers' usual settings; mergekit's defaults (density 1) would not trim at all
        default_factory=lambda: {"ties": {"density": 0.5}, "dare_ties": {"density": 0.5},
                                 "dare_linear": {"density": 0.5},
                                 "breadcrumbs": {"density": 0.9, "gamma": 0.01},
                                 "breadcrumbs_ties": {"density": 0.9, "gamma": 0.01}},
        description="per merge method, its parameters")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    budget: int = Field(100, ge=1, description="utility evaluations for every search")


class HSwarmConfig(StrictModel):
    """Heterogeneous Swarms (ALGORITHMS.md section 2): a multi-LLM system is a DAG over the
    experts; its roles (the graph) and weights (the experts) are searched in turn."""

    graphs: int = Field(6, ge=2, description="role-step particles: adjacency matrices")
    trials: int = Field(6, ge=1, description="weight-step: random model-to-node assignments")
    max_rounds: int = Field(10, ge=1, description="role-step + weight-step rounds")
    patience: int = Field(5, ge=1, description="rounds without a better system before stopping")
    steps: Literal["both", "role", "weight"] = Field(
        "both", description="role: graphs only (weights frozen); weight: a fixed chain graph, "
        "weights only; both: the method")
    decode: Literal["argmax", "top_p"] = Field("argmax", description="adjacency -> DAG")
    top_p: float = Field(0.9, gt=0, le=1, description="nucleus of the top_p decoding")
    role_search: SwarmConfig = Field(
        default_factory=lambda: SwarmConfig(patience=4),
        description="PSO knobs of the role-step (the weight-step uses `search`)")
    node_answers: Literal["generate", "choice"] = Field(
        "generate", description="what a non-end node passes on: generated text (the paper), "
        "or, for multiple choice, the option it picks by log-likelihood ('B: Paris'); choice "
        "costs one forward per item instead of a generation")
    max_new_tokens: int = Field(48, ge=1, description="length of a non-end node's answer")
    node_prompt: str = Field(
        "{question}\nAnswer briefly.", description="what a source node is asked; {question} "
        "is the task's prompt (with the choices for multiple choice)")
    context_template: str = Field(
        "{question}\n\nResponses of other models to this question follow; they may be wrong, "
        "so use them only if they help.\n{responses}",
        description="the question a non-source node gets: {question}, {responses}")
    response_template: str = Field("Previous response {k}: {response}",
                                   description="one predecessor's answer: {k}, {response}")
    baselines: list[Literal["best_expert", "chain", "star", "random_dags", "role_only",
                            "weight_only"]] = Field(
        default_factory=lambda: ["best_expert", "chain", "star", "random_dags"],
        description="rows of the report beside the search (role_only / weight_only are whole "
        "searches at the same budget)")

    @model_validator(mode="after")
    def _templates(self) -> HSwarmConfig:
        for key, fields in (("node_prompt", ["{question}"]),
                            ("context_template", ["{question}", "{responses}"]),
                            ("response_template", ["{response}"])):
            missing = [f for f in fields if f not in getattr(self, key)]
            if missing:
                raise ValueError(f"{key} must contain {' and '.join(missing)}")
        return self


class ModelConfig(StrictModel):
    """How the resident model runs: device, precision and the engine's batch limits. Every
    utility reads its batches from here; an out-of-memory back-off halves the limits of the
    run in memory, never this config."""

    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    dtype: Literal["auto", "float32", "bfloat16", "float16", "int8"] = Field(
        "auto", description="auto: float32 on CPU, bfloat16 on GPU; int8: dynamic int8 matmuls of "
        "the base model's linear layers on a CPU (per-channel weight scales; the LoRA factors "
        "and everything else stay float32)")
    batch_size: int = Field(16, ge=1, description="most items in one forward")
    max_batch_tokens: int = Field(
        4096, ge=1, description="most padded tokens in one forward (long items get small batches)")
    particles_per_forward: int | Literal["auto"] = Field(
        "auto", description="LoRA particles sharing each forward pass; auto: 8 on GPU, 1 on CPU")
    reuse_frozen_layers: bool = Field(
        True, description="compute the decoder layers below the first searched tensor once per "
        "input and reuse them for every particle (exact)")
    workers: int | None = Field(
        None, ge=1, description="Ray actors that score candidates, each holding the model (one "
        "per GPU, or per worker_cpus CPU threads); None: one resident model in this process "
        "(pip install 'modelswarms[ray]')")
    ray_address: str | None = Field(
        None, description="with workers: the Ray cluster; None starts a local one (or uses the "
        "one this process already joined), 'auto' joins a running one, or host:port")
    worker_cpus: int = Field(
        1, ge=1, description="CPU threads of each Ray actor when the actors run on CPUs")

    @model_validator(mode="after")
    def _ray_needs_workers(self) -> ModelConfig:
        if self.ray_address is not None and self.workers is None:
            raise ValueError("model.ray_address needs model.workers (how many Ray actors)")
        return self


class OutputConfig(StrictModel):
    dir: str = "runs/run"
    top_k: int = Field(3, ge=1, description="particles in the majority-vote ensemble and exports")
    evaluate_test: bool = True
    trackers: list[str] = Field(
        [], description="experiment trackers fed every iteration and the report: tensorboard, "
        "mlflow, wandb (each an extra: pip install 'modelswarms[NAME]')")
    tracking_dir: str | None = Field(
        None, description="where trackers write (TensorBoard logs, the MLflow store, W&B "
        "offline runs); default: the run folder (compare: its folder)")

    @field_validator("trackers")
    @classmethod
    def _known_trackers(cls, names: list[str]) -> list[str]:
        for name in names:
            if name not in TRACKERS:
                raise ValueError(f"unknown tracker {name!r}; known: {', '.join(TRACKERS)}")
        return names


class RunConfig(StrictModel):
    experts: ExpertsConfig
    data: DataConfig | None = Field(
        None, description="the items a search scores (run, compare, hswarm; not merge)")
    utility: UtilityConfig = MultipleChoiceConfig()
    strategy: str = Field(
        "swarm", description="the search, a registered strategy: swarm (Model Swarms), cmaes "
        "or random (over merge coefficients), greedy_soup, hswarm (Heterogeneous Swarms)")
    search: SwarmConfig = SwarmConfig()
    coefficients: CoefficientSearchConfig = CoefficientSearchConfig()
    budget: int | None = Field(None, ge=1, description="most utility evaluations a search may "
                               "use (every strategy); None: each strategy's own stop rules")
    model: ModelConfig = ModelConfig()
    output: OutputConfig = OutputConfig()
    merge: MergeSpec | None = Field(None, description="`modelswarms merge`: the merge to make")
    compare: CompareConfig | None = Field(None, description="`modelswarms compare`: the rows")
    hswarm: HSwarmConfig | None = Field(
        None, description="`modelswarms hswarm`: Heterogeneous Swarms over the experts")
    seed: int = 0
    _source: str | None = PrivateAttr(None)  # the file it was read from (load_config)

    @property
    def source(self) -> str | None:
        return self._source

    def __eq__(self, other: object) -> bool:
        # what a config says, not where it was read from
        if not isinstance(other, RunConfig):
            return NotImplemented
        return self.__dict__ == other.__dict__

    @model_validator(mode="after")
    def _documents_once(self) -> RunConfig:
        if self.data is not None and self.utility.type in OWN_DOCUMENTS:
            raise ValueError(f"data: utility type {self.utility.type} takes its documents from "
                             "its tasks; remove `data:` (utility.dev_split, test_split, max_dev "
                             "and max_test choose them)")
        return self

    def need_data(self, command: str) -> DataConfig | None:
        """The `data:` section; None when the utility's tasks bring their documents (lm_eval:
        the utility's `split_items` gives them)."""
        if self.data is None and self.utility.type not in OWN_DOCUMENTS:
            raise ConfigError(f"data: {command} scores candidates on items; the config has no "
                              "`data:` section (path, tasks, preset or hf)")
        return self.data

    @property
    def data_name(self) -> str:
        """What the run scores on, for reports: the data's name, or the utility's tasks."""
        return self.data.name if self.data is not None else self.utility.documents_name


def _resolve(value: str, root: Path) -> str:
    # Hub ids ("org/name") stay as they are unless a folder of that name exists beside the config.
    p = Path(value).expanduser()
    if p.is_absolute() or value in EMBEDDED:
        return value
    candidate = root / p
    if candidate.exists() or value.startswith((".", "..")) or "/" not in value:
        return str(candidate.resolve())
    return value


def _resolve_hf(hf: HFDataConfig, root: Path) -> HFDataConfig:
    # A builder name and a hub id stay as they are; local data files of a builder are the
    # config's, while those of a hub dataset or a folder are relative to that dataset.
    p = Path(hf.path).expanduser()
    path = hf.path
    if p.is_absolute():
        path = str(p)
    elif hf.path not in HF_BUILDERS and ((root / p).exists() or hf.path.startswith(".")):
        path = str((root / p).resolve())
    files = hf.data_files
    if hf.path in HF_BUILDERS and files is not None:
        def local(f: str) -> str:
            return f if "://" in f else str(root / Path(f).expanduser())

        def each(v: str | list[str]) -> str | list[str]:
            return local(v) if isinstance(v, str) else [local(f) for f in v]

        files = {k: each(v) for k, v in files.items()} if isinstance(files, dict) else each(files)
    return hf.model_copy(update={"path": path, "data_files": files})


def _format_errors(err: ValidationError, source: str, prefix: tuple[str, ...] = ()) -> str:
    lines = []
    for e in err.errors():
        loc = [*prefix, *(str(x) for x in e["loc"])]
        kind = ""
        # a utility's location carries its union tag ("utility.multiple_choice.topic")
        if len(loc) > 1 and loc[0] == "utility" and (
                loc[1] in UTILITY_CONFIGS or loc[1] == "custom"):
            kind = loc.pop(1)
        key = ".".join(loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            msg = f"unknown key for utility type {kind}" if kind else "unknown key"
        elif e["type"] == "missing" and kind:
            msg = f"required for utility type {kind}"
        elif e["type"] == "string_pattern_mismatch" and key == "utility.function":
            msg = "give 'module:function'"
        else:
            msg = e["msg"]
        lines.append(f"{source}: {key}: {msg}")
    return "; ".join(lines)  # one line: the command line prints it as one


def parse_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML config; relative paths inside it resolve against its folder."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML ({where}{problem})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    cfg = resolve_paths(parse_config(data, str(path)), path.parent.resolve())
    cfg._source = str(path)
    return cfg


def resolve_paths(cfg: RunConfig, root: Path) -> RunConfig:
    experts = cfg.experts.model_copy(update={
        "paths": [_resolve(p, root) for p in cfg.experts.paths],
        "base_model": _resolve(cfg.experts.base_model, root) if cfg.experts.base_model else None,
    })
    data = cfg.data and cfg.data.model_copy(update={
        "path": _resolve(cfg.data.path, root) if cfg.data.path else None,
        "tasks": {k: _resolve(v, root) for k, v in cfg.data.tasks.items()},
        "root": _resolve(cfg.data.root, root) if cfg.data.root else None,
        "test_path": _resolve(cfg.data.test_path, root) if cfg.data.test_path else None,
        "hf": _resolve_hf(cfg.data.hf, root) if cfg.data.hf else None,
    })
    output = cfg.output.model_copy(update={
        # an output folder is never a hub id: "runs/x" is beside the config, like every path
        "dir": str((root / Path(cfg.output.dir).expanduser()).resolve()),
        "tracking_dir": _resolve(cfg.output.tracking_dir, root) if cfg.output.tracking_dir
        else None})
    utility = cfg.utility.resolved(root) if isinstance(cfg.utility, LmEvalConfig) else \
        cfg.utility
    return cfg.model_copy(update={"experts": experts, "data": data, "output": output,
                                  "utility": utility})


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
