"""Recipes: small frozen pydantic models loaded from YAML, with dotted CLI overrides.

A recipe names every setting of a pipeline (data, tokenizer, model, optim, train, eval,
generate, and each post-training objective with its own loop). Unknown keys are rejected with
the closest valid key suggested (a moved key names its new place), and every run saves its
resolved recipe next to its canonical sha256 (`config_hash`). The data-preparation sections
live in forgeml.core.data_config.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from forgeml.core.data_config import (  # noqa: F401 (re-exported: callers import them here)
    BoilerplateConfig,
    CodeFilterConfig,
    CurateConfig,
    DataConfig,
    DedupConfig,
    FimConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    LanguageFilterConfig,
    LengthFilterConfig,
    MediaConfig,
    MediaDedupConfig,
    MixConfig,
    OcrConfig,
    RedactConfig,
    TokenizerConfig,
)
from forgeml.core.errors import ConfigError, NotFoundError
from forgeml.core.loop_config import OptimConfig, TrainConfig, _Section
from forgeml.core.multimodal_config import (  # noqa: F401 (re-exported)
    MultimodalPhaseConfig,
    MultimodalStageConfig,
)


class ModelConfig(_Section):
    """Decoder-only transformer, Mistral/Llama family."""

    arch: Literal["dense", "moe"] = "dense"
    dim: int = Field(256, gt=0)
    n_layers: int = Field(4, gt=0)
    n_heads: int = Field(4, gt=0)
    n_kv_heads: int = Field(2, gt=0)
    ffn_hidden: int = Field(688, gt=0)
    vocab_size: int | None = Field(None, description="None: taken from the tokenizer")
    max_seq_len: int = Field(512, gt=0)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    sliding_window: int | None = None
    qkv_bias: bool = Field(False, description="biases on the q/k/v projections (Qwen2)")
    init_std: float = 0.02
    # Mixture of experts (arch: moe, forgeml.models.moe); dense models ignore these.
    n_experts: int = Field(8, gt=0, description="moe: routed experts per layer")
    top_k: int = Field(2, gt=0, description="moe: experts each token is sent to")
    moe_ffn_hidden: int | None = Field(
        None, gt=0, description="moe: expert width; None: ffn_hidden"
    )
    gating: Literal["softmax", "sigmoid"] = Field("softmax", description="moe: router scores")
    shared_expert: bool = Field(False, description="moe: add one always-on expert")
    aux_loss_coef: float = Field(0.01, ge=0, description="moe: load-balancing loss weight")
    z_loss_coef: float = Field(0.001, ge=0, description="moe: router z-loss weight")

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.dim % self.n_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads})"
            )
        if (self.dim // self.n_heads) % 2:
            raise ValueError("head dim (dim / n_heads) must be even for RoPE")
        return self


class EvalConfig(_Section):
    batch_size: int = Field(8, gt=0)
    max_batches: int = Field(64, gt=0)
    seq_len: int | None = Field(None, description="None: the training seq_len")
    infill_examples: int = Field(
        100, ge=1, description="gaps scored when the data has damaged documents with answers"
    )


class GenerateConfig(_Section):
    prompts: list[str] = Field(default_factory=list)
    max_new_tokens: int = Field(64, gt=0)
    temperature: float = Field(0.8, ge=0)
    top_k: int | None = Field(50, gt=0)
    top_p: float | None = Field(0.95, gt=0, le=1)
    seed: int = 0
    stop: list[str] = Field(default_factory=list)


class ContinueConfig(_Section):
    """Continued pre-training from a model that already exists (`forgeml train cpt`)."""

    from_model: str | None = Field(None, description="model asset (id, name or alias)")
    new_tokens: list[str] = Field(default_factory=list, description="domain tokens to add")
    replay_data: str | None = Field(None, description="general-text dataset mixed back in")
    replay_fraction: float = Field(
        0.0, ge=0, lt=1, description="share of the training text (bytes) taken from replay_data"
    )


class RewardConfig(_Section):
    """One reward plugin of the RL stage (forgeml.train.rewards). `kind` is a built-in kind
    (function, regex, exact_match, execution, reward_model) or an import path
    'pkg.module:function' taking (prompt, completion, metadata) -> float."""

    kind: str = "function"
    name: str | None = Field(None, description="label in logs and errors; default: the kind")
    weight: float = Field(1.0, description="rewards of several plugins are summed with weights")
    function: str | None = Field(None, description="function: 'pkg.module:function'")
    workers: int = Field(
        1,
        ge=1,
        description="function: completions scored at once in threads (for a function that "
        "waits on child processes, as an execution check does); 1: one after another",
    )
    pattern: str | None = Field(
        None, description="regex: searched in the completion; exact_match: group 1 is the answer"
    )
    answer_field: str = Field("answer", description="exact_match: metadata key of the answer")
    cases_field: str = Field(
        "tests", description="execution: metadata key of [{inputs: [...], expected: [...]}]"
    )
    extract_code: bool = Field(True, description="execution: run the first ``` block if any")
    model: str | None = Field(None, description="reward_model: model asset (id, name, alias)")
    timeout_s: float = Field(5.0, gt=0, description="execution: wall-clock limit per test case")
    memory_mb: int = Field(512, ge=32, description="execution: address-space limit")


# A preference objective's loop (DPO, online DPO, reward model): a short fine-tune at a
# small lr from a trained model.
_PREFERENCE_OPTIM = OptimConfig(lr=5e-5, warmup_steps=5, weight_decay=0.0)
_PREFERENCE_TRAIN = TrainConfig(max_steps=40, micro_batch_size=4, eval_every=0)


class RLConfig(_Section):
    """GRPO (Shao et al., arXiv:2402.03300) against reward plugins (`forgeml train rl`, and the
    pipeline's RL stage); `optim` and `train` are its own, whatever the entry point."""

    rewards: list[RewardConfig] = Field(default_factory=list)
    prompt_format: Literal["raw", "chat"] = Field(
        "raw", description="chat: a plain prompt becomes a user turn of the chat template"
    )
    prompts_per_step: int = Field(4, gt=0)
    group_size: int = Field(8, ge=2, description="completions sampled per prompt (G)")
    max_new_tokens: int = Field(64, gt=0)
    temperature: float = Field(1.0, gt=0)
    top_k: int | None = Field(None, gt=0)
    top_p: float | None = Field(None, gt=0, le=1)
    inner_steps: int = Field(1, gt=0, description="optimizer passes over each sampled batch")
    micro_batch_size: int = Field(16, gt=0, description="sequences per forward/backward")
    clip_eps: float = Field(0.2, gt=0, description="PPO clip range (lower side)")
    clip_eps_high: float | None = Field(None, gt=0, description="upper side; None: clip_eps")
    kl_coef: float = Field(0.04, ge=0, description="k3 KL to the base model; 0: no reference")
    loss_aggregation: Literal["sequence", "token"] = Field(
        "sequence", description="sequence: mean per completion, then mean; token: mean of tokens"
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="divide advantages by the group's (or batch's) reward std"
    )
    dynamic_sampling: int = Field(
        0,
        ge=0,
        description="DAPO's dynamic sampling (arXiv:2503.14476): a group whose rewards "
        "are all equal (no signal) is swapped for a fresh prompt's, up to this many per step; "
        "0: off",
    )
    optim: OptimConfig = OptimConfig(lr=1e-5, warmup_steps=5, schedule="constant", weight_decay=0.0)
    train: TrainConfig = TrainConfig(max_steps=20, checkpoint_every=10, log_every=1)


class DPOConfig(_Section):
    """Preference optimisation (`forgeml train dpo`, and the pipeline's DPO stage): offline
    DPO/IPO/APO-zero on preference pairs, or online DPO (Guo et al., arXiv:2402.04792) ranking
    the policy's own samples; `optim` and `train` are its own, whatever the entry point."""

    loss: Literal["sigmoid", "ipo", "apo_zero"] = Field(
        "sigmoid",
        description="sigmoid: DPO; ipo: IPO; apo_zero: APO-zero (chosen up, rejected down)",
    )
    beta: float = Field(0.1, gt=0, description="strength of the KL tie to the reference model")
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="sigmoid: assumed share of flipped labels (cDPO)"
    )
    sft_coef: float = Field(
        0.0, ge=0, description="weight of the chosen completions' NLL added to the loss (RPO)"
    )
    max_length: int = Field(512, gt=1, description="prompt + completion tokens per sequence")
    over_length: Literal["drop", "truncate"] = Field(
        "drop", description="pairs longer than max_length: drop them, or cut the completions"
    )
    heldout_fraction: float = Field(0.1, ge=0, lt=1, description="pairs kept out for eval")
    online: bool = Field(False, description="sample pairs from the policy every step")
    samples_per_prompt: int = Field(2, ge=2, description="online: completions per prompt")
    pairs_per_prompt: int = Field(
        1, ge=1, description="online: disjoint pairs a prompt (best-worst, 2nd best-2nd worst...)"
    )
    reward_function: str | None = Field(
        None, description="online: 'pkg.module:function' (prompt, completion, metadata) -> float"
    )
    reward_model: str | None = Field(None, description="online: reward-model asset (id/alias)")
    max_new_tokens: int = Field(64, gt=0, description="online: tokens sampled per completion")
    temperature: float = Field(1.0, gt=0, description="online: sampling temperature")
    top_k: int | None = Field(None, gt=0, description="online: sample from the top k tokens")
    optim: OptimConfig = _PREFERENCE_OPTIM
    train: TrainConfig = _PREFERENCE_TRAIN

    @model_validator(mode="after")
    def _online_reward(self) -> DPOConfig:
        if self.online and (self.reward_function is None) == (self.reward_model is None):
            raise ValueError(
                "online DPO needs exactly one ranker: set dpo.reward_function "
                "('pkg.module:function') or dpo.reward_model (a reward-model asset)"
            )
        if self.pairs_per_prompt > self.samples_per_prompt // 2:
            raise ValueError(
                f"dpo.pairs_per_prompt {self.pairs_per_prompt} needs at least "
                f"{2 * self.pairs_per_prompt} samples_per_prompt (the pairs are disjoint), "
                f"not {self.samples_per_prompt}"
            )
        return self


class RewardModelConfig(_Section):
    """Reward model (`forgeml train rm`): a scalar head trained on preference pairs with the
    Bradley-Terry loss; held-out pair accuracy is reported. `optim` and `train` are its own."""

    max_length: int = Field(512, gt=1, description="prompt + completion tokens per sequence")
    over_length: Literal["drop", "truncate"] = "drop"
    heldout_fraction: float = Field(0.1, ge=0, lt=1, description="pairs kept out for accuracy")
    center_coef: float = Field(0.0, ge=0, description="pull rewards towards 0 (arXiv:2312.09244)")
    use_margin: bool = Field(True, description="subtract a pair's `margin` field when present")
    optim: OptimConfig = _PREFERENCE_OPTIM
    train: TrainConfig = _PREFERENCE_TRAIN


class LoRAConfig(_Section):
    """LoRA adapters (Hu et al., arXiv:2106.09685) on our linear layers, saved in PEFT format."""

    rank: int = Field(8, gt=0)
    alpha: float = Field(16.0, gt=0, description="update scale is alpha / rank")
    dropout: float = Field(0.0, ge=0, lt=1)
    targets: list[Literal["wqkv", "wo", "w13", "w2"]] = Field(
        default_factory=lambda: ["wqkv", "wo", "w13", "w2"],
        description="our layer names: wqkv (q/k/v), wo, w13 (gate/up), w2 (down)",
    )


class SFTConfig(_Section):
    """Supervised fine-tuning on chat JSONL (`forgeml train sft`; the pipeline runs it after
    pre-training when the recipe has this section). Loss on assistant turns only."""

    data: str | None = Field(None, description="training JSONL (messages or prompt/completion)")
    heldout: str | None = Field(None, description="held-out JSONL for eval loss; None: none")
    method: Literal["full", "lora"] = "full"
    lora: LoRAConfig = LoRAConfig()
    packing: bool = Field(True, description="pack short examples into rows (block-diagonal mask)")
    overlength: Literal["truncate", "drop"] = Field(
        "truncate", description="examples longer than sft.train.seq_len + 1 tokens"
    )
    on_invalid: Literal["error", "skip"] = Field(
        "error", description="invalid records: stop with file:line:field, or count and skip"
    )
    optim: OptimConfig = OptimConfig(lr=1e-3, warmup_steps=10, weight_decay=0.0)
    train: TrainConfig = TrainConfig(max_steps=200, eval_every=50, checkpoint_every=50)


class PreferenceStageConfig(_Section):
    """`pipeline run`: DPO (the recipe's `dpo` section, its loop in `dpo.train`/`dpo.optim`)
    from the SFT model on these pairs; measured by sampled win-rate vs the SFT model."""

    data: str = Field(description="preference JSONL ({messages|prompt, chosen, rejected})")
    judge: str | None = Field(
        None,
        description="'pkg.module:function' (prompt, completion, metadata) -> float ranking both "
        "models' samples on the held-out prompts; None: no win-rate",
    )
    eval_samples: int | None = Field(
        None,
        ge=1,
        description="win-rate samples per held-out prompt and model; None: dpo.samples_per_prompt",
    )


class RLStageConfig(_Section):
    """`pipeline run`: GRPO (the recipe's `rl` section, its loop in `rl.train`/`rl.optim`) from
    the last post-trained model, measured by greedy (and optionally sampled) reward on held-out
    prompts before and after."""

    prompts: str = Field(description="training prompts JSONL ({messages|prompt, ...metadata})")
    heldout: str | None = Field(None, description="held-out prompts JSONL for the before/after")
    eval_samples: int = Field(
        0,
        ge=0,
        description="also sample this many completions per held-out prompt as GRPO "
        "samples them (pass@1 from n samples, and pass@n); 0: greedy only",
    )


class PostTrainConfig(_Section):
    """Stages `pipeline run` adds after SFT, each measured on held-out data before and after:
    SFT by answer exact match on `sft.heldout`, DPO by win-rate, RL by held-out reward."""

    eval_limit: int = Field(60, gt=0, description="held-out examples per before/after eval")
    dpo: PreferenceStageConfig | None = None
    rl: RLStageConfig | None = None


class Recipe(_Section):
    """A whole factory run: every stage's settings. `optim` and `train` are pre-training's
    (and continued pre-training's); each post-training objective carries its own."""

    name: str = "recipe"
    description: str = ""
    data: DataConfig = DataConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    generate: GenerateConfig = GenerateConfig()
    curate: CurateConfig = CurateConfig()
    fim: FimConfig = FimConfig()
    cpt: ContinueConfig = ContinueConfig()
    dpo: DPOConfig = DPOConfig()
    reward_model: RewardModelConfig = RewardModelConfig()
    rl: RLConfig = RLConfig()
    sft: SFTConfig | None = None
    posttrain: PostTrainConfig | None = None
    multimodal: MultimodalStageConfig | None = None


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the form that is hashed."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def config_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of a config (or any JSON-able value)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(
            f"override '{item}' is not key=value", hint="write e.g. train.max_steps=200"
        )
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{item}' has an empty key", hint="write e.g. train.lr=3e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{item}': value is not valid YAML ({exc})") from None
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `raw` with dotted `key=value` overrides applied."""
    out = json.loads(json.dumps(raw))
    for item in overrides:
        path, value = _parse_override(item)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = value
    return out


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


# Keys that moved, old -> new: each post-training objective reads its loop from its own
# section whatever the entry point; `train`/`optim` are pre-training's.
MOVED_KEYS = {
    "posttrain.dpo.train": "dpo.train",
    "posttrain.dpo.optim": "dpo.optim",
    "posttrain.rl.train": "rl.train",
    "posttrain.rl.optim": "rl.optim",
}
# The post-training objectives' sections, each with its own `train` and `optim`.
OBJECTIVE_SECTIONS = ("sft", "dpo", "reward_model", "rl")


def _moved(exc: ValidationError, source: str) -> ConfigError | None:
    for err in exc.errors():
        old = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden" and old in MOVED_KEYS:
            return ConfigError(f"{source}: {old} moved: write {MOVED_KEYS[old]}")
    return None


def _describe(exc: ValidationError, model: type[BaseModel], source: str) -> ConfigError:
    moved = _moved(exc, source)
    if moved is not None:
        return moved
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    dotted = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        valid = _fields_at(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        prefix = ".".join(str(p) for p in loc[:-1])
        hint = (
            f"did you mean '{prefix + '.' if prefix else ''}{close[0]}'?"
            if close
            else f"valid keys here: {', '.join(valid)}"
        )
        return ConfigError(f"{source}: unknown key '{dotted}'", hint=hint)
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    where = f"'{dotted}'" if dotted else "recipe"
    return ConfigError(f"{source}: {where}: {err['msg']}{more}")


def validate_recipe(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    """Build a `Recipe` from a plain dict, turning pydantic errors into one clear line."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a recipe must be a YAML mapping, got {type(raw).__name__}")
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        raise _describe(exc, Recipe, source) from None


def _check_objective_keys(
    objective: str, raw: dict[str, Any], overrides: list[str], source: str
) -> None:
    """Refuse `train.*`/`optim.*` meant for a post-training objective: they are pre-training's,
    and `forgeml train <objective>` reads `<objective>.train`/`<objective>.optim`."""
    if objective not in OBJECTIVE_SECTIONS:
        raise ValueError(f"objective {objective!r} is none of {OBJECTIVE_SECTIONS}")
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key.split(".")[0] in ("train", "optim"):
            raise ConfigError(f"override {key} is pre-training's: write {objective}.{key}")
    data = raw.get("data")
    if isinstance(data, dict) and data.get("sources"):
        return  # a recipe that also pre-trains: its train/optim are pre-training's
    for section in ("train", "optim"):
        if section in raw and section not in (raw.get(objective) or {}):
            raise ConfigError(
                f"{source}: {section} is pre-training's and this recipe pre-trains nothing: "
                f"write {objective}.{section}"
            )


def load_recipe(
    path: str | Path | None, overrides: list[str] | None = None, *, objective: str | None = None
) -> Recipe:
    """Load a YAML recipe (or defaults when `path` is None) and apply dotted overrides.

    Relative `data.sources` (and the keys of `data.mix.weights`) are resolved against the
    recipe file's folder. With `objective` (one of OBJECTIVE_SECTIONS: the command trains
    that objective only), `train.*`/`optim.*` settings meant for it are refused with the key
    to write instead.
    """
    raw: dict[str, Any] = {}
    source = "overrides"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise NotFoundError(f"recipe not found: {path}", hint="check the path")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if isinstance(raw, dict) and isinstance(raw.get("data"), dict):

            def resolved(s: Any) -> Any:
                return str((path.parent / s).resolve()) if not Path(str(s)).is_absolute() else s

            sources = raw["data"].get("sources") or []
            if isinstance(sources, list):
                raw["data"]["sources"] = [resolved(s) for s in sources]
            mix = raw["data"].get("mix")
            if isinstance(mix, dict) and isinstance(mix.get("weights"), dict):
                mix["weights"] = {resolved(s): w for s, w in mix["weights"].items()}
    if objective is not None and isinstance(raw, dict):
        _check_objective_keys(objective, raw, overrides or [], source)
    raw = apply_overrides(raw, overrides or []) if isinstance(raw, dict) else raw
    return validate_recipe(raw, source)


def save_resolved(recipe: BaseModel, path: Path) -> str:
    """Write the resolved recipe as YAML with its hash in a header; return the hash."""
    digest = config_hash(recipe)
    body = yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
    from forgeml.core.io import atomic_write_text

    atomic_write_text(path, f"# config sha256: {digest}\n{body}")
    return digest
