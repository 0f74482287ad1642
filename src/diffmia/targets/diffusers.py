"""Any diffusers text-to-image pipeline as a target (hub id or folder), with image-to-image from the same
components, optional LoRA weights, a scheduler by name, dtype and device.

Each image is generated with its own ``torch.Generator`` seeded by its query, so an image does not depend on
the batch it lands in. Queries that differ only in prompt and seed share a batch.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, cast

from PIL import Image
from pydantic import Field

from diffmia.assets import resolve_model
from diffmia.errors import ConfigError, TargetError
from diffmia.families import native_size
from diffmia.files import weights_digest
from diffmia.images import load_rgb
from diffmia.quiet import dropping
from diffmia.records import Query
from diffmia.targets.base import TargetSection

SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-ancestral": "EulerAncestralDiscreteScheduler",
    "dpm-solver++": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
}
DTYPES = ("auto", "float64", "float32", "float16", "bfloat16")
Dtype = Literal["auto", "float64", "float32", "float16", "bfloat16"]
# diffusers' notice at every load of a LoRA without text-encoder weights; diffmia's own adapters train the denoiser
# alone, so for them it says nothing (for anyone else's LoRA it may flag a real mismatch, and it stays)
NO_TEXT_ENCODER_KEYS = r"No LoRA keys associated to \w+ found with the prefix='text_encoder"


def pick_device(device: str) -> str:
    """``auto``: CUDA, then MPS, then CPU."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _own(lora: Path) -> bool:
    """Whether ``lora`` is an adapter diffmia fine-tuned (``<out>/lora`` beside its ``card.json``): denoiser only."""
    card = lora.parent / "card.json"
    try:
        return bool(lora.is_dir() and json.loads(card.read_text(encoding="utf-8")).get("kind") == "diffmia fine-tune")
    except (OSError, ValueError, AttributeError):
        return False


def _init_image(query: Query, image: Image.Image | None) -> Image.Image:
    """A query's init image: the one given in memory, else its file as 8-bit RGB."""
    return image if image is not None else load_rgb(cast(Path, query.init_image))


class DiffusersTarget:
    """A local diffusers pipeline as a black box.

    Parameters
    ----------
    model : "builtin", a pipeline folder or a hub id
    lora : LoRA weights to load on top: a diffusers LoRA folder, or one ``.safetensors`` file in the diffusers,
        kohya or civitai key layout (``load_lora_weights`` converts it); ``lora_scale`` their strength
    scheduler : None keeps the pipeline's; else one of SCHEDULERS
    dtype : "auto" (float16 on CUDA, else float32) or an explicit one. Images never depend on the batch by
        construction (one generator per image), but multithreaded float32 CPU kernels can round a pixel
        differently for another batch shape; "float64" makes bit-exact reruns across batch sizes practical.
    device : "auto" (CUDA, then MPS, then CPU) or a torch device string
    batch_size : images per pipeline call
    safety_checker : keep the pipeline's safety checker, if it has one (False: off, so that filtered images do
        not replace real generations in an audit)
    """

    def __init__(
        self,
        model: str | Path = "builtin",
        *,
        lora: str | Path | None = None,
        lora_scale: float = 1.0,
        scheduler: str | None = None,
        dtype: str = "auto",
        device: str = "auto",
        batch_size: int = 8,
        safety_checker: bool = True,
    ) -> None:
        problems = []
        if scheduler is not None and scheduler not in SCHEDULERS:
            problems.append(f"unknown scheduler {scheduler!r} (valid: {', '.join(SCHEDULERS)})")
        if dtype not in DTYPES:
            problems.append(f"unknown dtype {dtype!r} (valid: {', '.join(DTYPES)})")
        if batch_size < 1:
            problems.append(f"batch_size must be at least 1, got {batch_size}")
        if lora is not None and not Path(lora).exists():
            problems.append(f"LoRA weights {lora} do not exist")
        if problems:
            raise ConfigError("diffusers target: " + "; ".join(problems))
        self.model = resolve_model(model)
        if Path(self.model).exists() and not (Path(self.model) / "model_index.json").is_file():
            raise TargetError(f"{self.model} is not a diffusers pipeline folder (no model_index.json)")
        self.lora, self.lora_scale, self.scheduler = lora, lora_scale, scheduler
        self.device = pick_device(device)
        self.dtype = ("float16" if self.device == "cuda" else "float32") if dtype == "auto" else dtype
        self.batch_size, self.safety_checker = batch_size, safety_checker
        self.calls = 0  # pipeline calls made, for tests and progress
        self._pipes: tuple[Any, Any] | None = None
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            # a local folder is identified by its weights alone, so a moved or copied model keeps its cache
            path = Path(self.model)
            identity = f"local@{weights_digest(path)}" if path.is_dir() else f"{self.model}@hub"
            lora = "none" if self.lora is None else weights_digest(Path(self.lora))  # a folder, or the one file
            self._fingerprint = (
                f"diffusers({identity},lora={lora}x{self.lora_scale},scheduler={self.scheduler},"
                f"dtype={self.dtype},device={self.device.split(':')[0]},safety_checker={self.safety_checker})"
            )
        return self._fingerprint

    def _load(self) -> tuple[Any, Any]:
        if self._pipes is None:
            import diffusers
            import torch
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForText2Image

            local = Path(self.model).exists()
            try:
                index = diffusers.DiffusionPipeline.load_config(self.model, local_files_only=local)
            except (OSError, ValueError) as exc:
                raise TargetError(f"cannot load a diffusers pipeline from {self.model!r}: {exc}") from None
            # only a pipeline that has a safety checker takes the option (SDXL, Flux, ... have none)
            off = not self.safety_checker and "safety_checker" in index
            options: dict[str, Any] = {"safety_checker": None} if off else {}
            try:
                text2img = AutoPipelineForText2Image.from_pretrained(
                    self.model, dtype=getattr(torch, self.dtype), local_files_only=local, **options
                )
            except (OSError, ValueError) as exc:
                raise TargetError(f"cannot load a diffusers pipeline from {self.model!r}: {exc}") from None
            if self.scheduler is not None:
                cls = getattr(diffusers, SCHEDULERS[self.scheduler])
                text2img.scheduler = cls.from_config(text2img.scheduler.config)
            if self.lora is not None:
                path = Path(self.lora)
                where = {"weight_name": path.name} if path.is_file() else {}
                quiet = dropping("diffusers.loaders.lora_base", NO_TEXT_ENCODER_KEYS) if _own(path) else nullcontext()
                try:
                    with quiet:
                        text2img.load_lora_weights(
                            str(path.parent if path.is_file() else path), adapter_name="target", **where
                        )
                except (OSError, ValueError) as exc:
                    raise TargetError(f"cannot load LoRA weights {self.lora}: {exc}") from None
                # merged into the weights they adapt: the same model, queried at the base model's speed
                text2img.fuse_lora(lora_scale=self.lora_scale, adapter_names=["target"])
                text2img.unload_lora_weights()
            text2img = text2img.to(self.device)
            text2img.set_progress_bar_config(disable=True)
            img2img = AutoPipelineForImage2Image.from_pipe(text2img)
            img2img.set_progress_bar_config(disable=True)
            if str(index.get("_class_name", "")).startswith("Flux"):
                # Flux's pipelines default to 1024 px whatever the model; a query without a size gets the size the
                # model was trained at (FLUX.1's is 1024, so nothing changes there)
                for pipe in (text2img, img2img):
                    pipe.default_sample_size = native_size(pipe) // pipe.vae_scale_factor
            self._pipes = (text2img, img2img)
        return self._pipes

    def pipeline(self) -> Any:
        """The loaded text-to-image pipeline (LoRA and scheduler applied): its weights, for gray-box baselines."""
        return self._load()[0]

    def generate(
        self, queries: Sequence[Query], init_images: Sequence[Image.Image | None] | None = None
    ) -> list[Image.Image]:
        """One image per query, in order; batched by identical settings.

        ``init_images``, one per query (None for a text-to-image query), are 8-bit RGB init images already in
        memory, used where a query has no ``init_image`` file: ``diffmia serve`` keeps every upload in its request.
        """
        import torch

        inits = list(init_images) if init_images is not None else [None] * len(queries)
        if len(inits) != len(queries):
            raise ConfigError(f"{len(inits)} init images for {len(queries)} queries")
        for query, init in zip(queries, inits, strict=True):
            if query.strength is not None and not 0.0 < query.strength <= 1.0:
                raise ConfigError(f"strength must lie in (0, 1], got {query.strength}")
            if query.strength is not None and int(query.steps * query.strength) < 1:  # diffusers would crash
                raise ConfigError(
                    f"image-to-image runs steps x strength denoising steps, and {query.steps} x "
                    f"{query.strength} is less than one: raise steps or strength"
                )
            if query.init_image is not None and init is not None:
                raise ConfigError("a query has both an init_image file and an init image in memory")
            if (query.init_image is None and init is None) != (query.strength is None):
                raise ConfigError("an image-to-image query needs both init_image and strength")
        text2img, img2img = self._load()
        results: dict[int, Image.Image] = {}

        def settings(i: int) -> tuple[Any, ...]:
            q = queries[i]
            mode = "img2img" if q.strength is not None else "text2img"
            return (mode, q.steps, q.guidance, q.negative_prompt, q.width, q.height, q.strength)

        order = sorted(range(len(queries)), key=lambda i: repr(settings(i)))
        for _, group in itertools.groupby(order, key=settings):
            indices = list(group)
            for start in range(0, len(indices), self.batch_size):
                batch = [queries[i] for i in indices[start : start + self.batch_size]]
                first = batch[0]
                kwargs: dict[str, Any] = {
                    "prompt": [q.prompt for q in batch],
                    "negative_prompt": [q.negative_prompt for q in batch] if first.negative_prompt else None,
                    "num_inference_steps": first.steps,
                    "guidance_scale": first.guidance,
                    "generator": [torch.Generator(self.device).manual_seed(q.seed) for q in batch],
                }
                if first.strength is not None:  # image-to-image
                    part = indices[start : start + self.batch_size]
                    kwargs["image"] = [_init_image(queries[i], inits[i]) for i in part]
                    kwargs["strength"] = first.strength
                    if first.width or first.height:
                        size = (first.width or first.height, first.height or first.width)
                        kwargs["image"] = [im.resize(size, Image.Resampling.BICUBIC) for im in kwargs["image"]]
                    images = img2img(**kwargs).images
                else:
                    images = text2img(width=first.width, height=first.height, **kwargs).images
                self.calls += 1
                for i, image in zip(indices[start : start + self.batch_size], images, strict=True):
                    results[i] = image
        return [results[i] for i in range(len(queries))]


class DiffusersTargetConfig(TargetSection):
    """A local diffusers pipeline (``kind = "diffusers"``, the default): a hub id, a pipeline folder or ``builtin``
    (the shipped tiny base), with optional LoRA weights; see :class:`~diffmia.targets.diffusers.DiffusersTarget`.
    The base model and the shadows an audit fine-tunes run with this table's ``dtype``, ``device`` and
    ``batch_size`` too."""

    kind: Literal["diffusers"] = "diffusers"
    model: str = "builtin"
    lora: str | None = None  # a diffusers LoRA folder, or one .safetensors file (diffusers, kohya or civitai keys)
    lora_scale: float = 1.0
    scheduler: str | None = None
    dtype: Dtype = "auto"
    device: str = "auto"
    batch_size: Annotated[int, Field(ge=1)] = 8
    safety_checker: bool = False  # off for audits: a filtered image is not the model's generation
    has_weights: ClassVar[bool] = True

    def build(self) -> DiffusersTarget:
        return DiffusersTarget(**self.model_dump(exclude={"kind"}))
