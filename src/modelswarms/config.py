"""Frozen, validated run configuration: one source of truth for every default.

YAML in, pydantic out. Unknown keys and wrong types are errors that name the key; relative
paths are resolved against the config file's folder, so a config can travel with its data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import core_schema

from .errors import ConfigError
from .models import EMBEDDED
from .trackers import TRACKERS  # the registry's names; the packages are checked at run


class StrictModel(BaseModel):
    # NaN and infinity are refused in every number of a config: a NaN merge weight once
    # wrote an all-NaN model and exited 0
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# experts.compose -> how its experts combine, filled by pool/base.py's register_pool (a pool
# kind declares itself there; the names live here so a config is checked before any load).
POOL_KINDS: list[str] = []


def _compose_values(schema: dict[str, Any]) -> None:
    schema["enum"] = sorted(POOL_KINDS)


class ExpertsConfig(StrictModel):
    paths: list[str] = Field(min_length=1, description="LoRA adapter folders or model folders")
    base_model: str | None = Field(
        None, description="Base model of LoRA experts (folder, hub id or 'smollm2'); "
        "default: the adapters' base_model_name_or_path")
    include: list[str] = Field(default_factory=list, description="globs of searched tensors")
    exclude: list[str] = Field(default_factory=list, description="globs of frozen tensors")
    trust_remote_code: bool = Field(
        False, description="run a model folder's own code when loading it; off: only the "
        "architectures transformers ships load")
    compose: str = Field(
        "weights", description="weights: one architecture, particles are weights; mixture: "
        "experts of any architecture, particles are mixing weights of their next-token "
        "distributions (a token swarm); or another registered pool kind",
        json_schema_extra=_compose_values)

    @field_validator("compose")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in POOL_KINDS:
            raise ValueError(f"unknown pool kind {kind!r}; registered: "
                             f"{', '.join(sorted(POOL_KINDS))}")
        return kind


# `datasets` builders that read local files named in data_files (a path, not a hub id)
HF_BUILDERS = ("arrow", "csv", "json", "pandas", "parquet", "text", "xml")


class HFFields(StrictModel):
    """Our item field -> the dataset's column. A field left out is read from the column of
    its own name when there is one."""

    question: str | None = Field(None, description="the question (HellaSwag: ctx)")
    choices: str | list[str] | None = Field(
        None, description="a column of options (a list, or ARC's {text, label}), or one "
        "column per option, e.g. [opa, opb, opc, opd]")
    answer: str | None = Field(None, description="the gold: an index, a letter or label, or "
                               "the option's text (multiple choice); the answer (exact match)")
    id: str | None = Field(None, description="an item id, named in errors and reports")
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
    fields: HFFields = Field(HFFields(), description="our item fields -> the dataset's "
                             "columns")
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
    test_split: str = Field("test", description="the test split (the report's test scores), "
                            "named as dev_split is")
    max_dev: int | None = Field(None, ge=1, description="the first items of the dev split; "
                                "null: all")
    max_test: int | None = Field(None, ge=1, description="the first items of the test split; "
                                 "null: all")

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


class EstimateConfig(StrictModel):
    """Fitness from fewer items (runs/estimate.py): candidates are scored on `items` anchor
    items of dev and their full-dev utility is estimated from them."""

    items: int = Field(ge=1, description="anchor items each candidate is scored on")
    method: Literal["anchor", "random"] = Field(
        "anchor", description="anchor: items stratified by clusters of the per-item "
        "correctness patterns of the candidates scored on full dev first (tinyBenchmarks' "
        "anchors, weighted by cluster size); random: a uniform random subset (a baseline)")


class UtilityBase(StrictModel):
    """The keys every utility has. A utility's own config subclasses this beside its code and
    declares itself with `register_utility(name, config=...)`; it says what it supports by
    the class attributes and properties below, which orchestration reads instead of its
    settings."""

    # Its tasks bring their documents: a run with it has no `data:` section.
    brings_documents: ClassVar[bool] = False

    estimate: EstimateConfig | None = Field(
        None, description="score candidates on a few dev items and estimate full-dev "
        "utility; the best is re-scored on full dev before it is reported or exported")
    on_invalid: Literal["stop", "worst"] = Field(
        "stop", description="a utility that returns NaN or infinity or raises: stop the run "
        "with a message naming it, or score that candidate -inf (never a best, the worst seen) "
        "and go on; counted as `invalid_utility` in the report either way")

    @property
    def log_likelihood(self) -> bool:
        """It reads the model's next-token distributions only (no generation), so averaged
        distributions (a logit average) can be scored."""
        return False

    @property
    def documents_name(self) -> str:
        """What its items are, for reports, when it brings its documents."""
        return str(getattr(self, "type", "utility"))

    def resolved(self, root: Path) -> UtilityBase:
        """The config with its file paths made relative to `root` (the config's folder)."""
        return self


class PromptedUtility(UtilityBase):
    """A utility that prompts the model: its template, chat turn and answer length."""

    chat_template: bool | None = Field(None, description="None: use it when the tokenizer has one")
    prompt: str | None = Field(None, description="prompt template override")
    max_new_tokens: int = Field(16, ge=1, description="length of a generated answer")


# utility type -> its config class, filled by register_utility (evaluation/utilities.py);
# "custom" is the config of a utility registered without one of its own.
UTILITY_CONFIGS: dict[str, type[UtilityBase]] = {}
DEFAULT_UTILITY = "multiple_choice"


def register_utility_config(name: str, config: type[UtilityBase]) -> None:
    UTILITY_CONFIGS[name] = config


def _utility_tag(value: Any) -> str:
    kind = value.get("type", DEFAULT_UTILITY) if isinstance(value, dict) else \
        getattr(value, "type", DEFAULT_UTILITY)
    # a type that is not text (a list, a mapping) is the custom config's to refuse by name
    return kind if isinstance(kind, str) and kind in UTILITY_CONFIGS else "custom"


def _validate_utility(value: Any) -> UtilityBase:
    """`utility:` is the registered config its `type` names: a key that belongs to another
    utility (say `topic` on multiple_choice) is an unknown key, not silently ignored."""
    if isinstance(value, UtilityBase):
        return value
    tag = _utility_tag(value)
    try:
        return UTILITY_CONFIGS[tag].model_validate(value)
    except ValidationError as err:  # located under the tag, as a tagged union would be
        raise ValidationError.from_exception_data(err.title, [
            {"type": e["type"], "loc": (tag, *e["loc"]), "input": e["input"],
             **({"ctx": e["ctx"]} if "ctx" in e else {})}
            for e in err.errors()]) from None


class _RegisteredUtility:
    """The schema of `utility:`, built from the registry when it is used (the configs
    register after this module is loaded)."""

    @classmethod
    def members(cls) -> list[type[UtilityBase]]:
        """The registered utility configs (for a reader that walks the config models)."""
        return list(dict.fromkeys(UTILITY_CONFIGS.values()))

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        return core_schema.no_info_plain_validator_function(_validate_utility)

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> Any:
        return handler(core_schema.union_schema([c.__pydantic_core_schema__
                                                 for c in cls.members()]))


UtilityConfig = Annotated[UtilityBase, _RegisteredUtility]


def field_models(field: Any) -> list[type[BaseModel]]:
    """The config models a field of a config model holds (a model, an optional one, a
    union's members, or what is registered for it: every utility config, a strategy's
    section), for readers that walk the config (the config reference, the fuzzer)."""
    for marker in field.metadata:
        if hasattr(marker, "members"):
            return marker.members()

    def models(annotation: Any) -> list[type[BaseModel]]:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return [annotation]
        return [m for arg in getattr(annotation, "__args__", ()) for m in models(arg)]

    return models(field.annotation)


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
        return _validate_utility(fields)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, "utility config", prefix=("utility",))) from None


def as_utility(cfg: Any, kind: str, **update: Any) -> Any:
    """`cfg`'s shared settings under another utility type (a utility built from parts)."""
    target = UTILITY_CONFIGS.get(kind, UTILITY_CONFIGS["custom"])
    keep = {k: v for k, v in cfg.model_dump().items() if k in target.model_fields}
    return utility_config(**{**keep, "type": kind, **update})


# Config sections a strategy reads (`search`, `coefficients`, `hswarm`): each section's class
# lives beside its strategy's code and registers here (search/swarm.py,
# search/coefficients.py, hetero/system.py).
SECTIONS: dict[str, type[StrictModel]] = {}


def register_section(name: str, config: type[StrictModel]) -> None:
    SECTIONS[name] = config


def section(name: str, **fields: Any) -> Any:
    """Section `name`'s config with `fields` set, the rest defaults."""
    return SECTIONS[name](**fields)


class Section:
    """A config field whose model is the one registered as section `name` (checked when a
    config is read, so the class can live beside the strategy that reads it); `optional`: it
    may be null."""

    def __init__(self, name: str, optional: bool = False):
        self.name, self.optional = name, optional

    def members(self) -> list[type[StrictModel]]:
        return [SECTIONS[self.name]]

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        def validate(value: Any) -> Any:
            model = SECTIONS[self.name]
            if value is None and self.optional:
                return None
            return value if isinstance(value, model) else model.model_validate(value)

        return core_schema.no_info_plain_validator_function(validate)

    def __get_pydantic_json_schema__(self, schema: Any, handler: Any) -> Any:
        inner = SECTIONS[self.name].__pydantic_core_schema__
        return handler(core_schema.nullable_schema(inner) if self.optional else inner)


class MergeSpec(StrictModel):
    """One merge: a method of the registry (modelswarms.merge), its parameters, weights."""

    method: str = Field(description="a merge method of the registry (modelswarms.merge): "
                        "linear, ties, dare_ties, slerp, ...")
    params: dict[str, Any] = Field(default_factory=dict, description="the method's "
                                   "parameters, e.g. {density: 0.5}")
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
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1,
                             description="each seeded row (the searches) runs once per seed")
    budget: int = Field(100, ge=1, description="utility evaluations for every search")


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
    dir: str = Field("runs/run", description="the run folder (relative to the config file)")
    top_k: int = Field(3, ge=1, description="particles in the majority-vote ensemble and exports")
    evaluate_test: bool = Field(True, description="score the test split for the report "
                                "(false: dev only)")
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
    """A config file: the experts, their data and utility, the search and its budget, the
    engine and the output; each command reads the sections it needs. A top-level key that is
    not a field below is a section registered by a strategy's own file (register_section),
    checked against its model; any other key is an error."""

    # "allow" only so that registered sections can sit at the top level; _sections refuses
    # every other key before pydantic sees it, with the same "unknown key" message
    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    experts: ExpertsConfig = Field(description="the experts searched, and their base model")
    data: DataConfig | None = Field(
        None, description="the items a search scores (run, compare, hswarm; not merge)")
    utility: UtilityConfig = Field(default_factory=lambda: utility_config(),
                                   description="what the search maximises; `type` picks the "
                                   "utility, the other keys are that utility's")
    strategy: str = Field(
        "swarm", description="the search, a registered strategy: swarm (Model Swarms), "
        "layer_swarm (Model Swarms over layer-wise merge coefficients), cmaes or random (over "
        "merge coefficients), greedy_soup, hswarm (Heterogeneous Swarms)")
    search: Annotated[StrictModel, Section("search")] = Field(
        default_factory=lambda: section("search"), description="Model Swarms' knobs (swarm, "
        "layer_swarm; hswarm's weight-step)")
    coefficients: Annotated[StrictModel, Section("coefficients")] = Field(
        default_factory=lambda: section("coefficients"), description="the knobs of searches "
        "over merge coefficients (cmaes, random)")
    budget: int | None = Field(None, ge=1, description="most utility evaluations a search may "
                               "use (every strategy); None: each strategy's own stop rules")
    model: ModelConfig = Field(ModelConfig(), description="the engine: device, precision, "
                               "batch limits, Ray workers")
    output: OutputConfig = Field(OutputConfig(), description="the run folder, exports and "
                                 "trackers")
    merge: MergeSpec | None = Field(None, description="`modelswarms merge`: the merge to make")
    compare: CompareConfig | None = Field(None, description="`modelswarms compare`: the rows")
    hswarm: Annotated[StrictModel | None, Section("hswarm", optional=True)] = Field(
        None, description="strategy hswarm (or `modelswarms hswarm`): Heterogeneous Swarms' "
        "settings")
    seed: int = Field(0, description="seed of every random draw (searches, bootstrap "
                      "intervals): the same config gives the same run")
    _source: str | None = PrivateAttr(None)  # the file it was read from (load_config)

    @property
    def source(self) -> str | None:
        return self._source

    def __eq__(self, other: object) -> bool:
        # what a config says, not where it was read from
        if not isinstance(other, RunConfig):
            return NotImplemented
        return (self.__dict__ == other.__dict__
                and self.__pydantic_extra__ == other.__pydantic_extra__)

    def settings(self, name: str) -> Any:
        """Section `name` as this config gives it, or its defaults where the config has none:
        how a strategy reads its own section, whether RunConfig declares it or its file
        registered it."""
        if name in type(self).model_fields:
            return getattr(self, name)
        given = (self.__pydantic_extra__ or {}).get(name)
        return given if given is not None else section(name)

    @model_validator(mode="before")
    @classmethod
    def _sections(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out, errors = dict(data), []
        for key, value in data.items():
            if key in cls.model_fields:
                continue
            model = SECTIONS.get(key) if isinstance(key, str) else None
            if model is None:
                errors.append({"type": "extra_forbidden", "loc": (key,), "input": value})
            elif not isinstance(value, model):
                try:
                    out[key] = model.model_validate({} if value is None else value)
                except ValidationError as err:  # located under the section's key
                    errors += [{"type": e["type"], "loc": (key, *e["loc"]), "input": e["input"],
                                **({"ctx": e["ctx"]} if "ctx" in e else {})}
                               for e in err.errors()]
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return out

    @model_validator(mode="after")
    def _documents_once(self) -> RunConfig:
        if self.data is not None and self.utility.brings_documents:
            raise ValueError(f"data: utility type {self.utility.type} takes its documents from "
                             "its tasks; remove `data:` (utility.dev_split, test_split, max_dev "
                             "and max_test choose them)")
        return self

    def need_data(self, command: str) -> DataConfig | None:
        """The `data:` section; None when the utility's tasks bring their documents (lm_eval:
        the utility's `split_items` gives them)."""
        if self.data is None and not self.utility.brings_documents:
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
    utility = cfg.utility.resolved(root)
    return cfg.model_copy(update={"experts": experts, "data": data, "output": output,
                                  "utility": utility})


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
