"""Configuration: TOML files validated into pydantic models.

Every problem in a file (an unknown key, a wrong type, a bad value) is reported at once, each with its
dotted path, in one :class:`~diffmia.errors.ConfigError`. The resolved configuration (defaults filled in)
is written back as TOML beside every result.
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import tomli_w
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from diffmia.attacks import ClassifierAttack, DistributionAttack, MembershipAttack, ThresholdAttack
from diffmia.errors import ConfigError
from diffmia.metrics import DEFAULT_FPRS, evaluate
from diffmia.records import Evaluation

AttackName = Literal["threshold", "distribution", "classifier"]
ALL_ATTACKS: tuple[AttackName, ...] = ("threshold", "distribution", "classifier")
DEFAULT_FINETUNE_STEPS = 500
Channel = Literal["text2img", "img2img"]
DEFAULT_CHANNELS: tuple[Channel, ...] = ("text2img",)
Probability = Annotated[float, Field(gt=0.0, lt=1.0)]


class _Section(BaseModel):
    # strict: TOML values are typed, so "100" for a number is a mistake to report, not to coerce
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class EvaluationConfig(_Section):
    """How scores are evaluated: FPRs for TPR@FPR, bootstrap size, interval confidence, seed."""

    fprs: list[Annotated[float, Field(gt=0.0, le=1.0)]] = Field(default_factory=lambda: list(DEFAULT_FPRS))
    n_bootstrap: Annotated[int, Field(ge=1)] = 1000
    confidence: Probability = 0.95
    seed: int = 0

    def evaluate(self, scores: Any, labels: Any, threshold: float | None = None) -> Evaluation:
        """:func:`diffmia.metrics.evaluate` with these settings."""
        return evaluate(scores, labels, fprs=self.fprs, threshold=threshold, n_bootstrap=self.n_bootstrap,
                        confidence=self.confidence, seed=self.seed)  # fmt: skip


def _check_reduce(value: Any) -> Any:
    """One message for the reduce option instead of one per member of its union type."""
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise ValueError('should be "mean", "max", a column name, or a column index >= 0')


class ThresholdConfig(_Section):
    """See :class:`~diffmia.attacks.ThresholdAttack`."""

    reduce: Annotated[str | int, BeforeValidator(_check_reduce)] = "mean"

    def build(self) -> ThresholdAttack:
        return ThresholdAttack(reduce=self.reduce)


class DistributionConfig(_Section):
    """See :class:`~diffmia.attacks.DistributionAttack`."""

    covariance: Literal["scalar", "diagonal", "full"] = "diagonal"
    tied: bool = False
    var_floor: Annotated[float, Field(gt=0.0)] = 1e-6

    def build(self) -> DistributionAttack:
        return DistributionAttack(covariance=self.covariance, tied=self.tied, var_floor=self.var_floor)


class ClassifierConfig(_Section):
    """See :class:`~diffmia.attacks.ClassifierAttack` (the built-in MLP)."""

    hidden_layer_sizes: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [256])
    alpha: Annotated[float, Field(ge=0.0)] = 1e-2
    learning_rate_init: Annotated[float, Field(gt=0.0)] = 1e-3
    max_iter: Annotated[int, Field(ge=1)] = 500
    validation_fraction: Probability = 0.2
    n_iter_no_change: Annotated[int, Field(ge=1)] = 20
    standardize: bool = True
    seed: int = 0

    def build(self) -> ClassifierAttack:
        return ClassifierAttack(
            hidden_layer_sizes=tuple(self.hidden_layer_sizes),
            alpha=self.alpha,
            learning_rate_init=self.learning_rate_init,
            max_iter=self.max_iter,
            validation_fraction=self.validation_fraction,
            n_iter_no_change=self.n_iter_no_change,
            standardize=self.standardize,
            random_state=self.seed,
        )


class AttacksConfig(_Section):
    """Which attack models to fit on shadow data, and their parameters."""

    use: list[AttackName] = Field(default_factory=lambda: list(ALL_ATTACKS), min_length=1)
    threshold: ThresholdConfig = Field(default_factory=ThresholdConfig)
    distribution: DistributionConfig = Field(default_factory=DistributionConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)

    def build(self) -> dict[str, MembershipAttack]:
        """A fresh, unfitted attack for each name in ``use``, in that order."""
        sections: dict[str, ThresholdConfig | DistributionConfig | ClassifierConfig] = {
            "threshold": self.threshold,
            "distribution": self.distribution,
            "classifier": self.classifier,
        }
        return {name: sections[name].build() for name in dict.fromkeys(self.use)}


class FinetuneConfig(_Section):
    """A fine-tuning recipe (``diffmia finetune``): what trains the targets and shadows.

    The defaults are the built-in model's recipe: a full UNet fine-tune. For Stable Diffusion practice set
    ``method = "lora"`` with a small ``lora_rank`` (the reference study used rank 4).
    """

    method: Literal["full", "lora"] = "full"
    lora_rank: Annotated[int, Field(ge=1)] = 4
    lora_alpha: Annotated[float, Field(gt=0.0)] | None = None
    lora_target_modules: list[str] = Field(default_factory=lambda: ["to_k", "to_q", "to_v", "to_out.0"], min_length=1)
    resolution: Annotated[int, Field(ge=8)] | None = None
    center_crop: bool = True
    random_flip: bool = False
    batch_size: Annotated[int, Field(ge=1)] = 64
    gradient_accumulation_steps: Annotated[int, Field(ge=1)] = 1
    learning_rate: Annotated[float, Field(gt=0.0)] = 1e-4
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant"
    lr_warmup_steps: Annotated[int, Field(ge=0)] = 0
    max_steps: Annotated[int, Field(ge=1)] | None = None  # neither set: DEFAULT_FINETUNE_STEPS
    epochs: Annotated[int, Field(ge=1)] | None = None
    seed: int = 0
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    checkpoint_every: Annotated[int, Field(ge=0)] = 250

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> FinetuneConfig:
        if self.max_steps is not None and self.epochs is not None:
            raise ValueError("set max_steps or epochs, not both")
        return self

    def total_steps(self, n_images: int) -> int:
        """Optimizer steps: ``max_steps``, or ``epochs`` passes over ``n_images``, or the default 500.

        500 full-UNet steps at batch 64 is the built-in recipe: about 2 minutes on 2 CPU cores for 100 images.
        """
        if self.epochs is not None:
            per_step = self.batch_size * self.gradient_accumulation_steps
            return max(1, -(-self.epochs * n_images // per_step))
        return self.max_steps or DEFAULT_FINETUNE_STEPS


class CaptionerTrainingConfig(_Section):
    """How ``diffmia finetune-captioner`` trains a captioner on the attacker's auxiliary images.

    The defaults train the built-in tiny BLIP from scratch; for a pretrained BLIP lower the learning rate
    (e.g. 1e-5) and the steps, or use ``method = "lora"``.
    """

    method: Literal["full", "lora"] = "full"
    lora_rank: Annotated[int, Field(ge=1)] = 8
    batch_size: Annotated[int, Field(ge=1)] = 32
    learning_rate: Annotated[float, Field(gt=0.0)] = 1e-3
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "cosine"
    lr_warmup_steps: Annotated[int, Field(ge=0)] = 100
    max_steps: Annotated[int, Field(ge=1)] = 3000
    shift_augmentation: Annotated[int, Field(ge=0)] = 0  # random translation of each image by up to this many pixels
    seed: int = 0
    checkpoint_every: Annotated[int, Field(ge=0)] = 500


class TargetConfig(_Section):
    """The model under audit: a local diffusers pipeline or an HTTP endpoint (see diffmia.targets)."""

    kind: Literal["diffusers", "http"] = "diffusers"
    model: str = "builtin"
    lora: str | None = None
    lora_scale: float = 1.0
    scheduler: str | None = None
    dtype: Literal["auto", "float64", "float32", "float16", "bfloat16"] = "auto"
    device: str = "auto"
    batch_size: Annotated[int, Field(ge=1)] = 8
    safety_checker: bool = False  # off for audits: a filtered image is not the model's generation
    url: str | None = None
    api: Literal["a1111", "diffmia"] = "diffmia"
    token_env: str | None = None
    timeout: Annotated[float, Field(gt=0.0)] = 120.0
    retries: Annotated[int, Field(ge=0)] = 4
    concurrency: Annotated[int, Field(ge=1)] = 2

    @model_validator(mode="after")
    def _http_needs_url(self) -> TargetConfig:
        if self.kind == "http" and not self.url:
            raise ValueError("an http target needs a url")
        return self

    def spec(self) -> dict[str, Any]:
        """The constructor arguments of the target, as :func:`diffmia.targets.make_target` takes them."""
        keys: tuple[str, ...] = (
            ("url", "api", "token_env", "timeout", "retries", "concurrency", "batch_size")
            if self.kind == "http"
            else ("model", "lora", "lora_scale", "scheduler", "dtype", "device", "batch_size", "safety_checker")
        )
        return {"kind": self.kind, **{k: getattr(self, k) for k in keys}}


class GenerationConfig(_Section):
    """Which queries to send: m per image and channel, their sampler settings, where the cache lives."""

    data: str | None = None
    channels: list[Channel] = Field(default_factory=lambda: list(DEFAULT_CHANNELS), min_length=1)
    queries_per_image: Annotated[int, Field(ge=1)] = 3
    steps: Annotated[int, Field(ge=1)] = 30
    guidance: Annotated[float, Field(ge=0.0)] = 7.5
    strength: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    negative_prompt: str = ""
    seed: int = 0
    cache: str = "runs/cache"
    executor: Literal["local", "ray"] = "local"
    workers: Annotated[int, Field(ge=1)] | None = None
    chunk_size: Annotated[int, Field(ge=1)] = 32


class Config(_Section):
    """The whole configuration of a diffmia run."""

    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    attacks: AttacksConfig = Field(default_factory=AttacksConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    captioner_training: CaptionerTrainingConfig = Field(default_factory=CaptionerTrainingConfig)
    target: TargetConfig = Field(default_factory=TargetConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)


def _describe(error: Any, model: type[BaseModel]) -> str:
    loc = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        message = "unknown key"
        known = _known_keys(model, error["loc"][:-1])
        close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
        if close:
            message += f" (did you mean {close[0]!r}?)"
        elif known:
            message += f" (valid keys: {', '.join(known)})"
        return f"{loc}: {message}"
    message = error["msg"].removeprefix("Value error, ")
    return f"{loc}: {message[:1].lower()}{message[1:]} (got {error['input']!r})"


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys valid at ``loc`` in ``model``, for "did you mean" hints."""
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        current = field.annotation
    return list(getattr(current, "model_fields", {}))


def parse_config(data: dict[str, Any], source: str = "config") -> Config:
    """Validate a parsed TOML document; report every problem in one ConfigError."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(error, Config) for error in exc.errors()]
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        raise ConfigError(f"{source}: {count}: " + "; ".join(problems)) from None


def with_options(config: Config, section: str, source: str = "options", **values: Any) -> Config:
    """``config`` with the given (non-None) values set in ``section``, validated like a file."""
    given = {k: v for k, v in values.items() if v is not None}
    if not given:
        return config
    resolved = config.model_dump()
    resolved[section].update(given)
    return parse_config(resolved, source)


def load_config(path: str | Path | None) -> Config:
    """Read and validate a TOML configuration file; ``None`` gives the defaults."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return parse_config(data, str(path))


def dump_config(config: Config) -> str:
    """The resolved configuration as TOML (it loads back to an equal Config; unset optional values are left out)."""
    return tomli_w.dumps(config.model_dump(mode="json", exclude_none=True))
