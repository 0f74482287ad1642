"""Configuration: TOML files validated into pydantic models.

Every problem in a file (an unknown key, a wrong type, a bad value) is reported at once, each with its
dotted path, in one :class:`~diffmia.errors.ConfigError`. The resolved configuration (defaults filled in)
is written back as TOML beside every result.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import tomli_w
from pydantic import BeforeValidator, Field, SerializeAsAny, model_validator

from diffmia.attacks import ATTACKS, ClassifierAttack, DistributionAttack, MembershipAttack, ThresholdAttack
from diffmia.attacks.baselines import BASELINES
from diffmia.distances import AGGREGATIONS, similarity_names
from diffmia.errors import ConfigError
from diffmia.files import read_text
from diffmia.metrics import DEFAULT_FPRS, evaluate
from diffmia.names import WEIGHTS, Channel, Mode
from diffmia.records import Evaluation
from diffmia.scenarios import SCENARIOS
from diffmia.sections import ByKind, OneOf, Section, validated
from diffmia.targets import TARGETS, TargetSection
from diffmia.targets.diffusers import DiffusersTargetConfig

DEFAULT_FINETUNE_STEPS = 500
_Config = TypeVar("_Config", bound=Section)
ModeName = Literal["text2img", "img2img"]
Strength = Annotated[float, Field(gt=0.0, le=1.0)]
DEFAULT_CHANNELS: tuple[ModeName, ...] = ("text2img",)
Probability = Annotated[float, Field(gt=0.0, lt=1.0)]
# names checked against their registries when a file is read, so a registered extension is accepted as it is
AttackName = Annotated[str, OneOf(lambda: ATTACKS)]
BaselineName = Annotated[str, OneOf(lambda: BASELINES)]
ScenarioName = Annotated[str, OneOf(lambda: SCENARIOS)]
SimilarityName = Annotated[str, OneOf(similarity_names)]
AggregationName = Annotated[str, OneOf(lambda: AGGREGATIONS)]


class EvaluationConfig(Section):
    """How scores are evaluated: FPRs for TPR@FPR, bootstrap size, interval confidence, seed."""

    fprs: list[Annotated[float, Field(gt=0.0, le=1.0)]] = Field(default_factory=lambda: list(DEFAULT_FPRS))
    n_bootstrap: Annotated[int, Field(ge=1)] = 1000
    confidence: Probability = 0.95
    seed: int = 0

    def evaluate(self, scores: Any, labels: Any, threshold: float | None = None) -> Evaluation:
        """:func:`diffmia.metrics.evaluate` with these settings."""
        return evaluate(
            scores,
            labels,
            fprs=self.fprs,
            threshold=threshold,
            n_bootstrap=self.n_bootstrap,
            confidence=self.confidence,
            seed=self.seed,
        )


def _check_reduce(value: Any) -> Any:
    """One message for the reduce option instead of one per member of its union type."""
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise ValueError('should be "mean", "max", a column name, or a column index >= 0')


def _check_strength(value: Any) -> Any:
    """One message for a strength or a list of strengths instead of one per member of its union type."""
    several = value if isinstance(value, list) else [value]
    numbers = [v for v in several if isinstance(v, int | float) and not isinstance(v, bool)]
    if several and len(numbers) == len(several) and all(0 < v <= 1 for v in numbers):
        if len({f"{v:g}" for v in numbers}) == len(numbers):  # the channel names (img2img@0.3) must differ too
            return value
        raise ValueError("each strength once: the list repeats one (to 6 significant digits)")
    raise ValueError("should be a strength in (0, 1] or a non-empty list of them, e.g. [0.3, 0.5, 0.7]")


class ThresholdConfig(Section):
    """See :class:`~diffmia.attacks.ThresholdAttack`."""

    # "mean", "max", or one feature without its channel (e.g. "pixels/l2/pooled/mean"): in an audit, that column of
    # each channel's table, and the mean of the channels' columns in the combined one. `diffmia attack` also takes
    # a column name or index of the tables it is given.
    reduce: Annotated[str | int, BeforeValidator(_check_reduce)] = "mean"
    # orient and scale every column on the shadow data before reducing (false: the raw columns, as before 2026-12)
    standardize: bool = True

    def build(self) -> ThresholdAttack:
        return ThresholdAttack(reduce=self.reduce, standardize=self.standardize)


class DistributionConfig(Section):
    """See :class:`~diffmia.attacks.DistributionAttack`."""

    covariance: Literal["scalar", "diagonal", "full"] = "diagonal"
    tied: bool = False
    var_floor: Annotated[float, Field(gt=0.0)] = 1e-6

    def build(self) -> DistributionAttack:
        return DistributionAttack(covariance=self.covariance, tied=self.tied, var_floor=self.var_floor)


class ClassifierConfig(Section):
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


class AttacksConfig(Section):
    """Which attack models to fit on shadow data, and their parameters."""

    use: list[AttackName] = Field(default_factory=lambda: list(ATTACKS), min_length=1)
    # how an audit picks each scenario's headline (the channel set and attack it is read on), before the target is
    # scored: "shadow" = the highest out-of-fold TPR at headline_fpr on the shadow data (AUC breaks ties; one fold
    # per shadow model with several, else headline_folds stratified folds), "fixed" = all channels and the classifier
    headline: Literal["shadow", "fixed"] = "shadow"
    headline_fpr: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.01
    headline_folds: Annotated[int, Field(ge=2)] = 5
    threshold: ThresholdConfig = Field(default_factory=ThresholdConfig)
    distribution: DistributionConfig = Field(default_factory=DistributionConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)

    def build(self) -> dict[str, MembershipAttack]:
        """A fresh, unfitted attack for each name in ``use``, in that order: built from its section of settings
        where it has one (the built-in attacks), else with its estimator's defaults (a registered extension)."""
        return {name: self._build(name) for name in dict.fromkeys(self.use)}

    def _build(self, name: str) -> MembershipAttack:
        section = getattr(self, name, None)
        if isinstance(section, ThresholdConfig | DistributionConfig | ClassifierConfig):
            return section.build()
        return ATTACKS.lookup(name)()


class PrivacyConfig(Section):
    """DP-SGD for a fine-tune (``[finetune.dp]``; ``diffmia finetune --dp``): Poisson-sampled batches of expected
    size ``finetune.batch_size``, every per-sample gradient clipped to ``max_grad_norm``, Gaussian noise of std
    ``noise_multiplier x max_grad_norm`` added to their sum; privacy accounted by Opacus's RDP accountant.

    Give ``epsilon`` (the noise multiplier is then solved for it over the recipe's steps) or ``noise_multiplier``
    (the epsilon spent is then reported), not both. DP-SGD trains the LoRA parameters (``method = "lora"``).
    """

    epsilon: Annotated[float, Field(gt=0.0)] | None = None
    noise_multiplier: Annotated[float, Field(ge=0.0)] | None = None
    delta: Annotated[float, Field(gt=0.0, lt=1.0)] = 1e-5
    max_grad_norm: Annotated[float, Field(gt=0.0)] = 1.0

    @model_validator(mode="after")
    def _one_budget(self) -> PrivacyConfig:
        if (self.epsilon is None) == (self.noise_multiplier is None):
            raise ValueError("give epsilon or noise_multiplier, exactly one")
        return self


class FinetuneConfig(Section):
    """A fine-tuning recipe (``diffmia finetune``): what trains the targets and shadows.

    The defaults are the built-in model's recipe: a full UNet fine-tune. For Stable Diffusion practice set
    ``method = "lora"`` with a small ``lora_rank`` (the reference study used rank 4). Defences: ``[finetune.dp]``
    (DP-SGD), early stopping on held-out images (``early_stopping_patience``), augmentation (``random_flip``,
    ``center_crop = false`` for random crops when the images are larger than ``resolution``).
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
    max_steps: Annotated[int, Field(ge=1)] | None = None  # max_steps and epochs both unset: 500 steps
    epochs: Annotated[int, Field(ge=1)] | None = None
    seed: int = 0
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    checkpoint_every: Annotated[int, Field(ge=0)] = 250
    dp: PrivacyConfig | None = None
    # early stopping: hold out validation_fraction of the images, measure their denoising loss every validate_every
    # steps, stop after early_stopping_patience measurements without a new best (unset: train every step)
    early_stopping_patience: Annotated[int, Field(ge=1)] | None = None
    validation_fraction: Annotated[float, Field(gt=0.0, le=0.5)] = 0.1
    validate_every: Annotated[int, Field(ge=1)] = 50

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> FinetuneConfig:
        if self.max_steps is not None and self.epochs is not None:
            raise ValueError("set max_steps or epochs, not both")
        if self.dp is not None and self.method != "lora":
            raise ValueError('method must be "lora" with [finetune.dp]: DP-SGD trains the LoRA parameters')
        if self.dp is not None and self.gradient_accumulation_steps != 1:
            raise ValueError("gradient_accumulation_steps must be 1 with [finetune.dp] (one Poisson batch a step)")
        return self

    def total_steps(self, n_images: int) -> int:
        """Optimizer steps: ``max_steps``, or ``epochs`` passes over ``n_images``, or the default 500.

        500 full-UNet steps at batch 64 is the built-in recipe: about 2 minutes on 2 CPU cores for 100 images.
        """
        if self.epochs is not None:
            per_step = self.batch_size * self.gradient_accumulation_steps
            return max(1, -(-self.epochs * n_images // per_step))
        return self.max_steps or DEFAULT_FINETUNE_STEPS


class CaptionerTrainingConfig(Section):
    """How ``diffmia finetune-captioner`` (and an audit, for scenarios II and IV) trains a captioner on the
    attacker's auxiliary images.

    The defaults fine-tune the shipped ``builtin`` tiny BLIP on D' (200 steps at 1e-4: about 15 s on 2 CPU
    cores). The shipped captioner itself was trained from scratch (``--model tiny``) on the public digits with
    ``learning_rate = 1e-3``, ``max_steps = 8000``, ``lr_warmup_steps = 100`` (``examples/builtin-captioner.toml``).
    For the pretrained BLIP base use a lower rate (e.g. 1e-5) or ``method = "lora"``.
    """

    method: Literal["full", "lora"] = "full"
    lora_rank: Annotated[int, Field(ge=1)] = 8
    batch_size: Annotated[int, Field(ge=1)] = 32
    learning_rate: Annotated[float, Field(gt=0.0)] = 1e-4
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "cosine"
    lr_warmup_steps: Annotated[int, Field(ge=0)] = 20
    max_steps: Annotated[int, Field(ge=1)] = 200
    shift_augmentation: Annotated[int, Field(ge=0)] = 0  # random translation of each image by up to this many pixels
    seed: int = 0
    checkpoint_every: Annotated[int, Field(ge=0)] = 500


class GenerationConfig(Section):
    """Which queries to send: m per image and channel, their sampler settings, where the cache lives."""

    data: str | None = None
    channels: list[ModeName] = Field(default_factory=lambda: list(DEFAULT_CHANNELS), min_length=1)
    queries_per_image: Annotated[int, Field(ge=1)] = 3
    steps: Annotated[int, Field(ge=1)] = 30
    guidance: Annotated[float, Field(ge=0.0)] = 7.5
    # image-to-image noise strength; several (e.g. [0.3, 0.5, 0.7]) send each image-to-image query at each, and the
    # features and attacks see one channel per strength (img2img@0.3, ...): a memorised image survives more noise
    strength: Annotated[Strength | list[Strength], BeforeValidator(_check_strength)] = 0.5
    negative_prompt: str = ""
    seed: int = 0
    cache: str | None = None  # default: <run directory>/cache for an audit, runs/cache for `diffmia generate`
    executor: Literal["local", "ray"] = "local"
    workers: Annotated[int, Field(ge=1)] | None = None
    chunk_size: Annotated[int, Field(ge=1)] = 32

    @property
    def strengths(self) -> tuple[float, ...]:
        return tuple(self.strength) if isinstance(self.strength, list) else (self.strength,)

    def query_channels(self) -> list[str]:
        """The channels as features, attacks and results name them (:class:`~diffmia.names.Channel`): image-to-image
        once per strength when several are given (``img2img@0.3``, ...), else once (``img2img``)."""
        several = len(self.strengths) > 1
        return [
            str(channel)
            for mode in map(Mode, dict.fromkeys(self.channels))
            for channel in (
                [Channel(mode, s) for s in self.strengths] if mode is Mode.IMG2IMG and several else [Channel(mode)]
            )
        ]

    def for_channel(self, channel: Channel | str) -> GenerationConfig:
        """These settings narrowed to one of :meth:`query_channels` (one channel, one strength)."""
        chosen = Channel.parse(channel) if isinstance(channel, str) else channel
        update: dict[str, Any] = {"channels": [str(chosen.mode)]}
        if chosen.strength is not None:
            update["strength"] = next(s for s in self.strengths if str(Channel(chosen.mode, s)) == str(chosen))
        return self.model_copy(update=update)


class DataConfig(Section):
    """The audit's images: the target's members and non-members, and the attacker's auxiliary pool.

    Leave all three folders unset for the bundled digits: ``builtin_members`` members and ``builtin_nonmembers``
    non-members are drawn from the private split with ``seed``; the rest of the private split is the auxiliary
    pool. Members must come from the same distribution as non-members (the blind baseline checks this).
    """

    members: str | None = None
    nonmembers: str | None = None
    auxiliary: str | None = None
    builtin_members: Annotated[int, Field(ge=10)] = 100
    builtin_nonmembers: Annotated[int, Field(ge=10)] = 100
    seed: int = 0

    @model_validator(mode="after")
    def _all_or_none(self) -> DataConfig:
        given = [self.members, self.nonmembers, self.auxiliary]
        if any(given) and not all(given):
            raise ValueError("set members, nonmembers and auxiliary together, or none of them for the bundled digits")
        return self

    @property
    def builtin(self) -> bool:
        return self.members is None


Granularity = Literal["pooled", "token", "unit"]
DEFAULT_DISTANCES = ("cosine", "l2", "ssim")
DEFAULT_GRANULARITIES: tuple[Granularity, ...] = ("pooled",)
DEFAULT_AGGREGATIONS = ("mean", "max", "std")


class FeaturesConfig(Section):
    """How a query image is compared with its generations (see diffmia.features).

    ``encoders``: ``pixels`` (resized pixels) or a transformers vision model by hub id or folder (DeiT
    ``facebook/deit-base-distilled-patch16-384`` is the reference). ``distances``: cosine, l1, l2, hamming, ssim.
    """

    encoders: list[str] = Field(default_factory=lambda: ["pixels"], min_length=1)
    pixel_size: Annotated[int, Field(ge=4)] = 32
    distances: list[SimilarityName] = Field(default_factory=lambda: list(DEFAULT_DISTANCES), min_length=1)
    granularities: list[Granularity] = Field(default_factory=lambda: list(DEFAULT_GRANULARITIES), min_length=1)
    aggregations: list[AggregationName] = Field(default_factory=lambda: list(DEFAULT_AGGREGATIONS), min_length=1)
    # add, beside every feature, the feature minus the same feature of the un-fine-tuned base model (audit.base_model)
    # queried for the same candidate and prompt with independent seeds (column ".../mean-minus-base"): how much more
    # alike the audited model makes a candidate than the public base already does
    calibrate: bool = False
    # add, beside every feature, its standardised distance from the same feature under the shadows in which the
    # candidate was an outsider (LiRA offline; column ".../mean-vs-outsiders"): the feature minus its mean under
    # audit.shadows / 2 - 1 such shadows (shadows come in complementary pairs: every image of D' is an outsider of
    # half of them), over the feature's spread among outsiders (pooled over D'); the target's candidates are also
    # queried under their reference shadows
    outsiders: bool = False


class ShadowConfig(Section):
    """A shadow model the attacker fine-tuned elsewhere, with the images it was and was not fine-tuned on."""

    model: str
    lora: str | None = None
    members: str
    nonmembers: str
    scenarios: list[ScenarioName] = Field(default_factory=lambda: list(SCENARIOS), min_length=1)


class AuditConfig(Section):
    """The audit (``diffmia run``): scenarios, shadow models, controls, where the run directory goes.

    Scenarios I and III query with the given captions, II and IV with captions from a captioner fine-tuned on
    the auxiliary set D'. In I and II half of D' (``overlap``) are real target members; in III and IV D' is
    disjoint from the target's data. Shadow models are fine-tuned with the ``[finetune]`` recipe on the
    ``shadow_base_model`` (default: ``base_model``; another family tests whether the attack transfers across
    architectures), on ``shadow_members`` images of D' (default: as many as the target has members); the other
    ``shadow_members`` images of D' are the shadow's non-members; ``shadows`` of them per D', in complementary pairs
    (the second of a pair is fine-tuned on the first one's non-members). The base-model control is always
    ``base_model``.
    ``finetune_target`` fine-tunes the target itself on the members with the same recipe (the built-in demo);
    otherwise ``[target]`` is the model audited.
    ``captioner`` (``builtin``: the shipped tiny BLIP of the digits; or a BLIP folder or hub id) is fine-tuned on
    each D' with ``[captioner_training]`` (``finetune_captioner = false``: used as it is). ``models_dir`` shares
    fine-tuned models between run directories (a study): each is kept under its name and a digest of what made
    it (base model, recipe, training images and captions) and reused by any run that needs the same one; by
    default models live in the run directory's ``models/``. ``baselines`` adds peer attacks that need no shadow
    model, scored on the target and the base model like every attack: ``gan-leaks`` (caption-free: the nearest of
    ``gan_leaks_samples`` generations from an empty prompt) and the gray-box ``loss``, ``secmi`` and ``pia``, which
    read the target's weights (a local diffusers target, or ``finetune_target``).
    """

    name: str = "audit"
    runs_dir: str = "runs"
    scenarios: list[ScenarioName] = Field(default_factory=lambda: list(SCENARIOS), min_length=1)
    base_model: str = "builtin"
    shadow_base_model: str | None = None
    finetune_target: bool = False
    shadows: Annotated[int, Field(ge=0)] = 1
    shadow_members: Annotated[int, Field(ge=10)] | None = None
    overlap: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    captioner: str = "builtin"
    finetune_captioner: bool = True
    # scenarios II and IV: prompt each image with the captioner's k best captions (beam search), query j with caption
    # j mod k; the aggregations then run over captions and seeds together (max: the best caption)
    captions_per_image: Annotated[int, Field(ge=1)] = 1
    models_dir: str | None = None
    baselines: list[BaselineName] = Field(default_factory=list)
    gan_leaks_samples: Annotated[int, Field(ge=1)] = 500
    base_control: bool = True
    blind_control: bool = True
    exposed: Annotated[int, Field(ge=0)] = 10
    seed: int = 0
    given_shadows: list[ShadowConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _has_shadows(self) -> AuditConfig:
        covered = {s for shadow in self.given_shadows for s in shadow.scenarios}
        uncovered = [s for s in self.scenarios if s not in covered]
        if self.shadows == 0 and uncovered:
            raise ValueError(
                f"scenario(s) {', '.join(uncovered)} have no shadow model: set shadows >= 1 "
                "or list given_shadows for them"
            )
        if self.shadows == 0 and self.shadow_base_model is not None:
            raise ValueError("shadow_base_model is set but no shadow is fine-tuned (shadows = 0)")
        if not self.name or any(c in self.name for c in "/\\") or self.name in (".", ".."):
            raise ValueError("name must be a plain folder name")
        return self


UNSET = "unset"


_DOTTED_KEY = r"^[a-z_]+(\.[a-z_0-9]+)+$"


class FactorConfig(Section):
    """One factor of a study: the dotted config ``key`` it sets, and its levels (``"unset"`` removes the key).

    Without ``key``, each level is a table of dotted keys and their values, set together (``{}``: the base as it
    is), so that levers can be compared side by side (e.g. ``{}``, ``{"features.calibrate" = true}``, both levers);
    such levels need ``labels``.
    """

    name: str
    key: Annotated[str, Field(pattern=_DOTTED_KEY)] | None = None
    values: list[Any] = Field(min_length=1)
    labels: list[str] | None = None

    @model_validator(mode="after")
    def _labels(self) -> FactorConfig:
        if self.labels is not None and len(self.labels) != len(self.values):
            raise ValueError(f"{len(self.labels)} labels for {len(self.values)} values")
        if self.key is None:
            if self.labels is None:
                raise ValueError("a factor without key sets several keys per level: give its levels labels")
            for value in self.values:
                if not isinstance(value, dict):
                    raise ValueError(f"a factor without key takes tables of dotted keys as levels, not {value!r}")
                bad = [k for k in value if not re.fullmatch(_DOTTED_KEY, k)]
                if bad:
                    raise ValueError(f"{', '.join(map(repr, bad))} is not a dotted setting (e.g. features.calibrate)")
        if len(set(self.level_labels)) != len(self.level_labels):
            raise ValueError("two levels share a label; give distinct labels")
        return self

    @property
    def level_labels(self) -> list[str]:
        return self.labels or [v if isinstance(v, str) else json_label(v) for v in self.values]

    def settings(self, value: Any) -> dict[str, Any]:
        """The dotted keys one level sets, and their values."""
        return {self.key: value} if self.key is not None else dict(value)


def json_label(value: Any) -> str:
    import json

    return json.dumps(value, separators=(",", "="), sort_keys=True).replace('"', "")


class StudySettings(Section):
    """A study (``diffmia study``): audits of ``base`` (``demo``, ``demo-realistic`` or an audit TOML) with the
    ``fixed`` settings, varying one factor at a time; every study under one ``runs_dir`` shares its generation cache
    and model store."""

    name: str = "study"
    runs_dir: str = "runs/studies"
    base: str = "demo"
    fixed: dict[str, Any] = Field(default_factory=dict)
    factors: list[FactorConfig] = Field(min_length=1)


class StudyConfig(Section):
    study: StudySettings


def load_study(path: str | Path) -> StudyConfig:
    """Read and validate a study file (every problem in one ConfigError)."""
    return validated(StudyConfig, read_toml(path), str(path))


# the model under audit: a discriminated union over the target kinds (diffmia.targets.TARGETS), `kind` picking the
# table's model
TargetTable = Annotated[SerializeAsAny[TargetSection], ByKind(TARGETS, "diffusers")]


class Config(Section):
    """The whole configuration of a diffmia run."""

    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    attacks: AttacksConfig = Field(default_factory=AttacksConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    captioner_training: CaptionerTrainingConfig = Field(default_factory=CaptionerTrainingConfig)
    target: TargetTable = Field(default_factory=DiffusersTargetConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)

    @model_validator(mode="after")
    def _a_query_per_caption(self) -> Config:
        k, m = self.audit.captions_per_image, self.generation.queries_per_image
        if k > m:
            raise ValueError(
                f"audit.captions_per_image = {k} needs at least as many queries per image "
                f"(generation.queries_per_image = {m}): one query per caption"
            )
        return self

    @model_validator(mode="after")
    def _outsiders_need_pairs(self) -> Config:
        audit = self.audit
        if not self.features.outsiders:
            return self
        if audit.shadows < 4 or audit.shadows % 2:
            raise ValueError(
                f"features.outsiders needs audit.shadows even and at least 4 (got {audit.shadows}): "
                "the shadows come in complementary pairs, and a shadow's own candidates need an "
                "outsider shadow besides that one"
            )
        if audit.given_shadows:
            raise ValueError(
                "features.outsiders takes its references from the shadows fine-tuned here, whose splits "
                "of D' it plans; drop audit.given_shadows or features.outsiders"
            )
        return self

    @model_validator(mode="after")
    def _weights_for_graybox(self) -> Config:
        needed = [b for b in self.audit.baselines if BASELINES[b].evidence == WEIGHTS]
        if needed and not (self.audit.finetune_target or self.target.has_weights):
            raise ValueError(
                f"audit.baselines {', '.join(needed)} read the target's weights, which an "
                f"{self.target.kind} target does not give; drop them or audit a local model"
            )
        return self


class ProvenanceConfig(Section):
    """Dataset inference for an owner (``diffmia provenance``): were the suspects used to fine-tune the target?

    ``suspects`` (images that may have been used) and ``references`` (the same kind of images, certainly not used:
    made after the model, or never published) are image folders. The target (``[target]``) and the public base
    model it was fine-tuned from are queried for every image as an audit queries them (``[generation]``,
    ``[features]``, base-calibrated features always on); no shadow model is trained. A scoring model is fitted on
    the target's own answers by cross-fitting in ``folds`` folds, and its held-out AUC is tested against
    ``permutations`` relabellings of the images: the p-value is valid as computed. The same test on the base
    model's answers and on the images alone are the controls; either one at p < ``control_alpha`` makes the verdict
    "inconclusive"."""

    suspects: str | None = None  # the images that may have been used (an image folder); the command's first argument
    references: str | None = None  # the same kind of images, certainly not used; the command's second argument
    # the public model the target was fine-tuned from; unset: the target's own model when the target is that model
    # with LoRA weights, or the base_model a diffmia fine-tune's card names
    base_model: str | None = None
    # where the prompts come from: the given captions, the captioner's, or both (each its own features); auto: the
    # given captions where every image has one, else the captioner's
    prompts: Literal["auto", "given", "captioner", "both"] = "auto"
    captioner: str = (
        "builtin"  # the captioner used as it is: builtin, a BLIP folder (e.g. from finetune-captioner) or hub id
    )
    folds: Annotated[int, Field(ge=2, le=20)] = 5
    permutations: Annotated[int, Field(ge=1, le=100_000)] = 1000
    alpha: Probability = 0.01  # "used" when the target's test gives p below it (and no control strays)
    control_alpha: Probability = 0.05  # a control below it makes the verdict "inconclusive"
    # with a local target, gray-box scores join the features: the denoising loss, and PIA's error where the family
    # allows it, each the target's and minus the base model's
    graybox: bool = True
    exposed: Annotated[int, Field(ge=0, le=100)] = 10  # the suspects that weigh most, shown beside their generations
    name: str = "provenance"
    runs_dir: str = "runs"
    seed: int = 0

    @model_validator(mode="after")
    def _plain_name(self) -> ProvenanceConfig:
        if not self.name or any(c in self.name for c in "/\\") or self.name in (".", ".."):
            raise ValueError("name must be a plain folder name")
        return self


class ProvenanceFile(Section):
    """A provenance configuration (``diffmia provenance --config FILE``): the target and how it is queried, as in
    an audit, and the ``[provenance]`` section."""

    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    target: TargetTable = Field(default_factory=DiffusersTargetConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    provenance: ProvenanceConfig = Field(default_factory=ProvenanceConfig)

    def audit_config(self) -> Config:
        """The audit configuration that queries the target as this file does (base-calibrated features on)."""
        features = self.features.model_copy(update={"calibrate": True, "outsiders": False})
        return Config(evaluation=self.evaluation, target=self.target, generation=self.generation, features=features)


def load_provenance_config(path: str | Path | None) -> ProvenanceFile:
    """Read and validate a provenance file (every problem in one ConfigError); ``None`` gives the defaults."""
    return ProvenanceFile() if path is None else validated(ProvenanceFile, read_toml(path), str(path))


def parse_config(data: dict[str, Any], source: str = "config") -> Config:
    """Validate a parsed TOML document; report every problem in one ConfigError."""
    return validated(Config, data, source)


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
    return parse_config(read_toml(path), str(path))


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file's contents; a missing, unreadable or invalid file is a ConfigError."""
    path = Path(path)
    text = read_text(path, ConfigError, "config file")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return data


def same_but_where(previous: _Config, current: _Config, section: str) -> bool:
    """Whether two resolved configurations are one, but for where their run directory lives (``section.runs_dir``
    and ``section.name``: a moved run directory still resumes)."""
    where = {key: getattr(getattr(current, section), key) for key in ("runs_dir", "name")}
    moved = previous.model_copy(update={section: getattr(previous, section).model_copy(update=where)})
    return dump_config(moved) == dump_config(current)


def dump_config(config: Section) -> str:
    """The resolved configuration (an audit's, a provenance file's) as TOML: it loads back to an equal one; unset
    optional values are left out."""
    return tomli_w.dumps(config.model_dump(mode="json", exclude_none=True))
