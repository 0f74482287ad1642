"""The ``diffmia`` command.

A :class:`~diffmia.errors.DiffmiaError` ends a command with one ``Error: ...`` line on stderr and exit
status 2; any other exception is a bug in diffmia and shows its traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from diffmia.assets import DEMO_PRESETS
from diffmia.cache import GenerationCache
from diffmia.captioners import GivenCaptions
from diffmia.data import load_image_folder
from diffmia.errors import ConfigError, DiffmiaError, optional
from diffmia.execution import generate, generate_on_ray
from diffmia.files import write_json
from diffmia.lab.classifier import train_digit_classifier
from diffmia.lab.data import write_digits
from diffmia.lab.pipeline import TinySDConfig
from diffmia.lab.pretrain import PretrainConfig, pretrain
from diffmia.queries import build_queries
from diffmia.quiet import quiet_third_parties
from diffmia.sections import validated
from diffmia.settest import load_run_scores, run_set_test
from diffmia.targets import make_target, probe_target
from diffmia.targets.diffusers import DiffusersTarget
from diffmia.versions import __version__

if TYPE_CHECKING:
    from diffmia.config import Config, ProvenanceFile

app = typer.Typer(
    name="diffmia",
    help="Measure how much a fine-tuned text-to-image diffusion model leaks its training images "
    "(black-box membership inference).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # plain tracebacks for bugs; never print local variables (secrets)
    rich_markup_mode=None,
)
config_app = typer.Typer(help="Inspect configuration files.", no_args_is_help=True)
app.add_typer(config_app, name="config")
data_app = typer.Typer(help="Bundled data sets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
cache_app = typer.Typer(help="Inspect generation caches.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")
lab_app = typer.Typer(help="Build the built-in tiny model: pretraining, quality classifier.", no_args_is_help=True)
app.add_typer(lab_app, name="lab")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="TOML configuration ([evaluation], [attacks] sections); defaults apply without it. "
        "See `diffmia config show`.",
        dir_okay=False,
    ),
]


JsonOption = Annotated[bool, typer.Option("--json", help="Print results as JSON instead of a table.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"diffmia {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            help="Also show what the Hugging Face libraries print that is known to be harmless (their loading bars, "
            "the torchvision and safety-checker notices); their other warnings always show.",
        ),
    ] = False,
) -> None:
    """Measure how much a fine-tuned text-to-image diffusion model leaks its training images."""
    if not verbose:
        quiet_third_parties()
    _log_to_stderr()


class _Stderr(logging.Handler):
    """diffmia's log lines on standard error, one a line (the stream looked up at each line, as tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        prefix = "warning: " if record.levelno >= logging.WARNING else ""
        typer.echo(prefix + record.getMessage(), err=True)


def _log_to_stderr() -> None:
    """What the stages log (``logging.getLogger("diffmia...")``, level INFO) goes to standard error."""
    logger = logging.getLogger("diffmia")
    logger.setLevel(logging.INFO)
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        logger.addHandler(_Stderr())


@app.command()
def evaluate(
    scores: Annotated[
        Path,
        typer.Argument(
            help="CSV or Parquet file with a 'member' column (true/false or 1/0) and score columns "
            "(higher = more likely a member).",
            dir_okay=False,
        ),
    ],
    column: Annotated[
        list[str] | None,
        typer.Option("--column", "-c", help="Score column to evaluate; repeat for several. [default: score]"),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            help="Call a sample a member when its score is >= THRESHOLD, for balanced accuracy. Choose it "
            "without these labels (diffmia attack scores: 0). Without it, balanced accuracy is not reported."
        ),
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Evaluate membership scores: AUC, TPR at low FPR with the FPR achieved, intervals, counts."""
    from diffmia.config import load_config
    from diffmia.report.terminal import print_evaluations
    from diffmia.tables import read_scores

    settings = load_config(config).evaluation
    values, labels = read_scores(scores, column or ["score"])
    evaluations = {name: settings.evaluate(s, labels, threshold) for name, s in values.items()}
    if as_json:
        typer.echo(json.dumps({"file": str(scores), "evaluations": {k: v.to_dict() for k, v in evaluations.items()}}))
    else:
        print_evaluations(evaluations, f"Membership evaluation of {scores}")


@app.command()
def attack(
    shadow: Annotated[
        Path,
        typer.Option(
            help="Shadow feature table (Parquet or CSV): 'sample_id', 'member' and feature columns "
            "(higher = more likely a member). The attacks are fitted on it.",
            dir_okay=False,
        ),
    ],
    target: Annotated[
        Path,
        typer.Option(
            help="Target feature table with the same feature columns; 'member' is optional and, when "
            "present, only used to evaluate the frozen attacks.",
            dir_okay=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            help="Where to write the target's scores: one column per attack, 0 = decision threshold "
            "(Parquet; CSV when it ends in .csv).",
            dir_okay=False,
        ),
    ],
    use: Annotated[
        list[str] | None,
        typer.Option(
            "--attack",
            "-a",
            help="Attack to run, by its registered name (a wrong one is answered with the valid ones); repeat for "
            "several. [default: the config's attacks.use: every attack]",
        ),
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Fit attack models on shadow features, score the target once, and evaluate where labels exist."""
    from diffmia.attacks import fit_and_score
    from diffmia.config import load_config, with_options
    from diffmia.report.terminal import print_evaluations
    from diffmia.tables import read_feature_table, write_scores

    settings = with_options(load_config(config), "attacks", "--attack", use=use or None)
    if out.suffix.lower() not in (".parquet", ".pq", ".csv"):
        raise DiffmiaError(f"--out {out} must end in .parquet, .pq or .csv")
    shadow_table = read_feature_table(shadow)
    target_table = read_feature_table(target)
    scores = fit_and_score(settings.attacks.build(), shadow_table, target_table)
    metadata = {
        "diffmia_version": __version__,
        "shadow": str(shadow),
        "target": str(target),
        "n_shadow": len(shadow_table),
        "attacks": settings.attacks.model_dump(mode="json"),
        "score": "decision function: higher = more likely a member; >= 0 = predicted member",
    }
    write_scores(out, target_table.sample_ids, scores, target_table.y, metadata)

    evaluations = {}
    if target_table.y is not None:
        evaluations = {name: settings.evaluation.evaluate(s, target_table.y, 0.0) for name, s in scores.items()}
    if as_json:
        result = {"out": str(out), "evaluations": {k: v.to_dict() for k, v in evaluations.items()}}
        typer.echo(json.dumps(result))
        return
    n_members = int(shadow_table.y.sum()) if shadow_table.y is not None else 0
    typer.echo(
        f"Fitted {', '.join(scores)} on {len(shadow_table)} shadow samples ({n_members} members); "
        f"scored {len(target_table)} target samples -> {out}"
    )
    if evaluations:
        print_evaluations(evaluations, f"Attacks fitted on {shadow}, evaluated on {target}")


@config_app.command("show")
def config_show(
    path: Annotated[
        Path | None, typer.Argument(help="A TOML config; without it, the defaults.", dir_okay=False)
    ] = None,
) -> None:
    """Validate a config and print it resolved (every default filled in) as TOML."""
    from diffmia.config import dump_config, load_config

    typer.echo(dump_config(load_config(path)), nl=False)


@config_app.command("reference")
def config_reference(
    out: Annotated[
        Path | None, typer.Option(help="Write the reference to this file instead of printing it.", dir_okay=False)
    ] = None,
) -> None:
    """Print every section and key of a configuration (type, default, description) as Markdown: docs/config.md."""
    from diffmia.configdoc import config_reference as reference
    from diffmia.configdoc import write_config_reference

    if out is None:
        typer.echo(reference(), nl=False)
        return
    write_config_reference(out)
    typer.echo(f"wrote {out}")


@data_app.command("digits")
def data_digits(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write (images/ and metadata.jsonl).", file_okay=False)],
) -> None:
    """Write scikit-learn's 1,797 handwritten digits as a captioned image folder (32x32 PNG, metadata.jsonl)."""

    out = write_digits(out_dir)
    typer.echo(f"wrote 1797 captioned digits to {out} (split: 1197 public, 600 private)")


FAMILY_HELP = (
    "Pipeline family: sd (the Stable Diffusion 1.x layout), sdxl (two text encoders, pooled text and "
    "size ids, SDXL's UNet layout and scheduler), sd3 (two CLIP and a T5 encoder, a joint-attention "
    "transformer trained by flow matching) or flux (a CLIP and a T5 encoder, a double- and "
    "single-stream transformer over 2 x 2 latent patches, trained by flow matching)."
)


@lab_app.command("pretrain")
def lab_pretrain(
    data: Annotated[Path, typer.Argument(help="Captioned image folder (e.g. from `diffmia data digits`).")],
    out_dir: Annotated[Path, typer.Argument(help="Output: pipeline/, card.json, checkpoints/.", file_okay=False)],
    split: Annotated[
        str | None,
        typer.Option(help="Train on the images whose metadata 'split' is this; 'all' for every image."),
    ] = "public",
    vae_steps: Annotated[int, typer.Option(min=1, help="VAE optimizer steps.")] = 400,
    unet_steps: Annotated[int, typer.Option(min=1, help="Denoiser + text encoder optimizer steps.")] = 3500,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, batches and noise.")] = 0,
    vae_channels: Annotated[str, typer.Option(help="VAE block widths, comma-separated (levels = entries).")] = (
        "32,64,64"
    ),
    unet_channels: Annotated[
        str,
        typer.Option(
            help="UNet block widths, comma-separated (levels = entries; SD3, Flux: the last is the transformer's "
            "width)."
        ),
    ] = ("32,64"),
    unet_layers: Annotated[int, typer.Option(min=1, help="ResNet (+ attention) layers per UNet block.")] = 2,
    text_width: Annotated[int, typer.Option(min=4, help="Text encoder width (= cross-attention width).")] = 64,
    text_layers: Annotated[int, typer.Option(min=1, help="Text encoder transformer layers.")] = 3,
    family: Annotated[str, typer.Option(help=FAMILY_HELP)] = "sd",
    resume: Annotated[bool, typer.Option(help="Resume from out_dir/checkpoints when present.")] = True,
) -> None:
    """Pretrain a tiny base model (VAE, then UNet with its text encoders). The defaults build the shipped base;
    other sizes or ``--family sdxl`` give a base of another family (e.g. for shadows that do not share the target's
    architecture)."""
    import shlex

    recipe = PretrainConfig(vae_steps=vae_steps, unet_steps=unet_steps, seed=seed)
    model = TinySDConfig(
        vae_channels=_channels("--vae-channels", vae_channels),
        unet_layers_per_block=unet_layers,
        unet_channels=_channels("--unet-channels", unet_channels),
        text_width=text_width,
        text_layers=text_layers,
    )
    command = shlex.join(
        [
            "diffmia",
            "lab",
            "pretrain",
            str(data),
            str(out_dir),
            "--split",
            str(split),
            "--vae-steps",
            str(vae_steps),
            "--unet-steps",
            str(unet_steps),
            "--seed",
            str(seed),
            "--vae-channels",
            vae_channels,
            "--unet-channels",
            unet_channels,
            "--unet-layers",
            str(unet_layers),
            "--text-width",
            str(text_width),
            "--text-layers",
            str(text_layers),
            "--family",
            family,
        ]
    )
    path = pretrain(
        data,
        out_dir,
        split=None if split == "all" else split,
        recipe=recipe,
        model=model,
        family=family,
        resume=resume,
        command=command,
    )
    typer.echo(f"base pipeline written to {path}; its card: {out_dir / 'card.json'}")


def _channels(option: str, text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"{option} {text!r}: give comma-separated integers, e.g. 32,64,128") from None


@lab_app.command("classifier")
def lab_classifier(
    data: Annotated[Path, typer.Argument(help="Image folder whose metadata has a 'label' (0-9) per image.")],
    out: Annotated[Path, typer.Argument(help="JSON file for the classifier's weights.", dir_okay=False)],
    split: Annotated[str | None, typer.Option(help="Train on this metadata split; 'all' for every image.")] = "public",
) -> None:
    """Train the digit classifier that measures whether generations show the prompted digit."""

    classifier = train_digit_classifier(data, out, split=None if split == "all" else split)
    typer.echo(f"digit classifier written to {out} (5-fold accuracy {classifier.accuracy:.3f})")


@app.command()
def finetune(
    model: Annotated[str, typer.Option(help="'builtin' (the shipped tiny base), a pipeline folder, or a hub id.")],
    data: Annotated[Path, typer.Option(help="Captioned image folder (metadata.jsonl or metadata.csv).")],
    out: Annotated[Path, typer.Option(help="Output folder: pipeline/ or lora/, and card.json.", file_okay=False)],
    config: ConfigOption = None,
    method: Annotated[str | None, typer.Option(help="full or lora [default: the config's finetune.method]")] = None,
    rank: Annotated[int | None, typer.Option(help="LoRA rank [default: finetune.lora_rank]")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps [default: finetune.max_steps]")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="[default: finetune.learning_rate]")] = None,
    batch_size: Annotated[int | None, typer.Option(help="[default: finetune.batch_size]")] = None,
    seed: Annotated[int | None, typer.Option(help="[default: finetune.seed]")] = None,
    resume: Annotated[bool, typer.Option(help="Resume from OUT/checkpoints when present.")] = True,
    dp: Annotated[
        bool,
        typer.Option(
            "--dp",
            help="Train by DP-SGD (Poisson sampling, per-sample clipping, Gaussian noise; Opacus RDP accounting) "
            "with --epsilon or --noise-multiplier, or the config's [finetune.dp]. Implies --method lora.",
        ),
    ] = False,
    epsilon: Annotated[
        float | None, typer.Option(help="DP-SGD: the epsilon to reach; the noise multiplier is solved for it.")
    ] = None,
    noise_multiplier: Annotated[float | None, typer.Option(help="DP-SGD: noise std / clip norm, instead.")] = None,
    delta: Annotated[float | None, typer.Option(help="DP-SGD delta [default: finetune.dp.delta, 1e-5]")] = None,
    max_grad_norm: Annotated[
        float | None, typer.Option(help="DP-SGD per-sample clip norm [default: finetune.dp.max_grad_norm, 1.0]")
    ] = None,
) -> None:
    """Fine-tune the denoiser of an SD 1.x/2.x, SDXL, SD3 or Flux model (full or LoRA) on a captioned image folder; the
    family is read from the model's pipeline class.

    With --dp the LoRA parameters train by DP-SGD; card.json records epsilon, delta, the clip norm, the noise
    multiplier and the sampling rate.
    """
    from diffmia.config import load_config, parse_config, with_options
    from diffmia.lab.finetune import finetune as run_finetune

    settings = load_config(config)
    if steps is not None:  # --steps replaces the config's duration, whichever way it was given
        settings = settings.model_copy(update={"finetune": settings.finetune.model_copy(update={"epochs": None})})
    privacy = {"epsilon": epsilon, "noise_multiplier": noise_multiplier, "delta": delta, "max_grad_norm": max_grad_norm}
    if not dp and any(v is not None for v in privacy.values()):
        raise ConfigError("--epsilon, --noise-multiplier, --delta and --max-grad-norm need --dp")
    if dp and epsilon is None and noise_multiplier is None and settings.finetune.dp is None:
        raise ConfigError("--dp needs a privacy budget: --epsilon or --noise-multiplier (or [finetune.dp] in --config)")
    if dp:
        resolved = settings.model_dump(mode="json", exclude_none=True)
        section = resolved["finetune"].setdefault("dp", {})
        if epsilon is not None or noise_multiplier is not None:  # a budget given here replaces the config's
            section.pop("epsilon", None)
            section.pop("noise_multiplier", None)
        section.update({k: v for k, v in privacy.items() if v is not None})
        if method is None:
            resolved["finetune"]["method"] = "lora"
        settings = parse_config(resolved, "options")
    settings = with_options(
        settings,
        "finetune",
        method=method,
        lora_rank=rank,
        max_steps=steps,
        learning_rate=learning_rate,
        batch_size=batch_size,
        seed=seed,
    )
    result = run_finetune(model, data, out, settings.finetune, resume=resume)
    typer.echo(f"fine-tune written to {result} (card: {result / 'card.json'})")
    card = json.loads((result / "card.json").read_text(encoding="utf-8"))
    if card.get("privacy"):
        p = card["privacy"]
        typer.echo(
            f"DP-SGD: epsilon {p['epsilon']:.3g} at delta {p['delta']:g} (noise multiplier "
            f"{p['noise_multiplier']:.3g}, clip {p['max_grad_norm']:g}, sampling rate {p['sample_rate']:.3g}, "
            f"{p['steps']} steps; {p['accountant']})"
        )


@app.command("finetune-captioner")
def finetune_captioner_command(
    model: Annotated[
        str,
        typer.Option(
            help="'tiny' (a small BLIP trained from scratch), 'builtin' (the shipped tiny BLIP, trained on "
            "the public digits), a BLIP folder or hub id."
        ),
    ],
    data: Annotated[Path, typer.Option(help="The attacker's captioned auxiliary images (an image folder).")],
    out: Annotated[Path, typer.Option(help="Output folder: captioner/ and card.json.", file_okay=False)],
    config: ConfigOption = None,
    steps: Annotated[int | None, typer.Option(help="[default: captioner_training.max_steps]")] = None,
    method: Annotated[str | None, typer.Option(help="full or lora [default: captioner_training.method]")] = None,
    split: Annotated[
        str | None, typer.Option(help="Train only on the images whose metadata 'split' is this (e.g. public).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Resume from OUT/checkpoints when present.")] = True,
) -> None:
    """Fine-tune a BLIP captioner on auxiliary images (scenarios II and IV caption queries with it).

    The shipped `builtin` captioner came from: diffmia finetune-captioner --model tiny --data digits --split public
    --config examples/builtin-captioner.toml
    """
    from diffmia.config import load_config, with_options
    from diffmia.lab.captioner import finetune_captioner

    settings = with_options(load_config(config), "captioner_training", max_steps=steps, method=method)
    result = finetune_captioner(model, data, out, settings.captioner_training, split=split, resume=resume)
    typer.echo(f"captioner written to {result} (card: {out / 'card.json'})")


@app.command()
def serve(
    model: Annotated[str, typer.Argument(help="'builtin', a diffusers pipeline folder or a hub id.")],
    host: Annotated[str, typer.Option(help="Interface to listen on (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
    lora: Annotated[Path | None, typer.Option(help="LoRA weights to load on top of the model.")] = None,
    token_env: Annotated[
        str | None, typer.Option(help="Require 'Authorization: Bearer <token>', the token read from this variable.")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per pipeline call.")] = 8,
    device: Annotated[str, typer.Option(help="auto (CUDA, then MPS, then CPU) or a torch device.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float64, float32, float16 or bfloat16.")] = "auto",
    safety_checker: Annotated[bool, typer.Option(help="Keep the pipeline's safety checker, if it has one.")] = False,
    insecure: Annotated[
        bool, typer.Option(help="Allow a non-loopback --host without --token-env: anyone reaching it may query.")
    ] = False,
    max_body_mib: Annotated[int, typer.Option(min=1, help="Largest request body, in MiB (else 413).")] = 32,
    max_images: Annotated[int, typer.Option(min=1, help="Most images one request may ask for (else 422).")] = 16,
    max_steps: Annotated[int, typer.Option(min=1, help="Most denoising steps per image (else 422).")] = 150,
    max_side: Annotated[
        int, typer.Option(min=8, help="Largest width and height, of generated and init images (else 422).")
    ] = 2048,
) -> None:
    """Serve a local diffusers model over HTTP in both wire formats (diffmia JSON and AUTOMATIC1111).

    A --host other than loopback needs --token-env (or --insecure). The server speaks plain HTTP: beyond one
    machine, put a TLS proxy in front of it so that the token does not travel in clear.
    """
    from diffmia.serve import Limits, is_loopback, make_app

    uvicorn = optional("uvicorn", extra="serve", purpose="diffmia serve")

    if token_env is not None and not os.environ.get(token_env):
        raise DiffmiaError(f"--token-env {token_env}: that environment variable is not set")
    if token_env is None and not is_loopback(host):
        if not insecure:
            raise DiffmiaError(
                f"--host {host} is not a loopback address and no --token-env is set: anyone who can "
                "reach it could query the model; set --token-env NAME, or pass --insecure"
            )
        typer.echo(
            f"warning: serving on {host} without a token (--insecure): anyone who can reach it may query the model",
            err=True,
        )
    limits = Limits(body_bytes=max_body_mib * 2**20, images=max_images, steps=max_steps, side=max_side)
    target = DiffusersTarget(
        model, lora=lora, batch_size=batch_size, device=device, dtype=dtype, safety_checker=safety_checker
    )
    typer.echo(
        f"serving {target.model} on http://{host}:{port} (POST /v1/generate, /sdapi/v1/txt2img, /sdapi/v1/img2img)"
    )
    uvicorn.run(make_app(target, token_env, limits), host=host, port=port, log_level="warning")


@app.command("generate")
def generate_command(
    config: Annotated[Path, typer.Argument(help="TOML config with [target] and [generation].", dir_okay=False)],
) -> None:
    """Run only the generation stage into the cache, so a large generation can run first and be audited later."""
    from diffmia.config import load_config

    settings = load_config(config)
    plan = settings.generation
    if plan.data is None:
        raise DiffmiaError(f"{config}: generation.data (the image folder to query with) is not set")
    folder = load_image_folder(plan.data, require_captions=True)
    queries = build_queries(folder.samples, GivenCaptions().caption(folder.samples), plan)
    cache_dir = plan.cache or "runs/cache"
    cache = GenerationCache(cache_dir)
    spec = settings.target.spec()
    probe_target(spec)  # an endpoint that cannot answer fails here, before any query
    if plan.executor == "ray":
        generate_on_ray(spec, queries, cache, workers=plan.workers, chunk_size=plan.chunk_size)
    else:
        generate(make_target(spec), queries, cache, chunk_size=plan.chunk_size)
    channels = ", ".join(plan.query_channels())
    typer.echo(f"{len(queries)} queries for {len(folder)} images ({channels}) are in {cache_dir}")


RunsDirOption = Annotated[
    Path | None, typer.Option(help="Folder that holds run directories. [default: the config's audit.runs_dir]")
]
NameOption = Annotated[str | None, typer.Option(help="Run directory name. [default: the config's audit.name]")]


TableOption = Annotated[
    bool, typer.Option("--table", help="Also print every score set (the full evaluation table) after the verdict.")
]


def _audit(settings: Config, runs_dir: Path | None, name: str | None, table: bool) -> None:
    from diffmia.audit import run_audit, run_dir_of
    from diffmia.config import with_options
    from diffmia.report.terminal import print_run

    settings = with_options(
        settings, "audit", "options", runs_dir=None if runs_dir is None else str(runs_dir), name=name
    )
    print_run(run_audit(settings), table=table)
    run = run_dir_of(settings)
    typer.echo(
        f"report: {run / 'report.html'} (beside result.json, scores.parquet and features.parquet; the full table: "
        f"--table, or `diffmia report {run} --format md`)"
    )


@app.command("run")
def run_command(
    config: Annotated[
        Path, typer.Argument(help="TOML audit configuration (see `diffmia config show`).", dir_okay=False)
    ],
    runs_dir: RunsDirOption = None,
    name: NameOption = None,
    table: TableOption = False,
) -> None:
    """Run a membership audit: shadows, queries, features, attacks, evaluation and report, into a run directory.

    Ends with the verdict and where the report is. A rerun of the same configuration resumes: finished models,
    cached generations and embeddings are reused.
    """
    from diffmia.config import load_config

    _audit(load_config(config), runs_dir, name, table)


@app.command()
def demo(
    runs_dir: RunsDirOption = None,
    name: NameOption = None,
    preset: Annotated[
        Literal["standard", "realistic"],
        typer.Option(
            help="standard: a full fine-tune of 100 members, over-fitted (about 10 minutes); realistic: "
            "LoRA adapters over 200 members at the fewest passes that memorise (about 15 minutes)."
        ),
    ] = "standard",
    print_config: Annotated[
        bool, typer.Option("--print-config", help="Print the demo's configuration (a starting point) and exit.")
    ] = False,
    table: TableOption = False,
) -> None:
    """The built-in demo audit: bundled digits, the shipped tiny base, a target fine-tuned here.

    Four scenarios x three attacks, controls and the report, on 2 CPU cores; everything is cached in runs/demo (or
    runs/demo-realistic), so a second run takes well under a minute.
    """
    from diffmia.config import dump_config, load_config

    config = load_config(DEMO_PRESETS[preset])
    if print_config:
        typer.echo(dump_config(config), nl=False)
        return
    _audit(config, runs_dir, name, table)


@app.command()
def report(
    run_dir: Annotated[
        Path, typer.Argument(help="A run directory written by `diffmia run` or `diffmia demo`.", file_okay=False)
    ],
    output_format: Annotated[
        Literal["html", "md"],
        typer.Option("--format", help="html: report.html, one self-contained page; md: report.md, Markdown."),
    ] = "html",
) -> None:
    """Render the report again from a run directory's saved results (no model is loaded)."""
    from diffmia.report import render_markdown, render_report

    typer.echo(f"wrote {render_markdown(run_dir) if output_format == 'md' else render_report(run_dir)}")


@app.command()
def study(
    study_file: Annotated[
        Path, typer.Argument(metavar="STUDY.toml", help="Study file (see examples/studies/).", dir_okay=False)
    ],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and list the runs, run nothing.")] = False,
) -> None:
    """Run a study: audits varying one factor at a time from a base configuration, sharing caches and models.

    Writes <runs_dir>/<name>/: runs/ (one run directory per level), study.json, and per factor a Markdown table
    and a plot of AUC against its levels. All studies under one runs_dir share <runs_dir>/cache and /models. A
    rerun resumes: finished runs, models and generations are reused.
    """
    from diffmia.config import load_study
    from diffmia.study import plan_study, run_study, slug, study_dir

    settings = load_study(study_file)
    runs = plan_study(settings)
    if dry_run:
        for run in runs:
            typer.echo(f"{run.factor} = {run.label}: {Path(run.config.audit.runs_dir) / run.config.audit.name}")
        return
    run_study(settings)
    root = study_dir(settings)
    for factor in settings.study.factors:
        typer.echo((root / f"{slug(factor.name)}.md").read_text(encoding="utf-8"))
    typer.echo(f"study directory: {root} (study.json, a table and a plot per factor, runs/)")


@app.command()
def provenance(
    suspects: Annotated[
        Path | None,
        typer.Argument(
            help="Image folder: the images that may have been used. [default: the config's]", file_okay=False
        ),
    ] = None,
    references: Annotated[
        Path | None,
        typer.Argument(
            help="Image folder: the same kind of images, certainly not used (made after the model, or never "
            "published). [default: the config's]",
            file_okay=False,
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="The target: 'builtin', a diffusers pipeline folder or a hub id. [default: the config's [target]]"
        ),
    ] = None,
    lora: Annotated[
        Path | None, typer.Option(help="LoRA weights on --model: a diffusers LoRA folder or one .safetensors file.")
    ] = None,
    base: Annotated[
        str | None,
        typer.Option(
            help="The public model the target was fine-tuned from. [default: --model when --lora is given, or the base "
            "a diffmia fine-tune's card names]"
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Run directory. [default: the config's provenance.runs_dir/name]", file_okay=False),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="TOML with [target] (an HTTP endpoint too), [generation], [features] and [provenance] (prompts, "
            "captioner, folds, permutations, alpha). See docs/config.md.",
            dir_okay=False,
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the result as JSON (provenance.json) instead.")
    ] = False,
) -> None:
    """Was this model trained on my images? Dataset inference for an owner: no labels, no shadow model.

    Queries the target and its public base model for every suspect and reference, as an audit does, fits a scoring
    model on the target's own answers by cross-fitting and tests it by permuting the whole procedure: a p-value
    valid as computed. The same test on the base model's answers and on the images alone are controls. Ends with
    the verdict (used, no evidence of use, inconclusive); report.html, report.md and provenance.json in the run
    directory.
    """
    from diffmia.config import load_provenance_config
    from diffmia.provenance.plan import run_dir_of
    from diffmia.provenance.run import run_provenance
    from diffmia.report.terminal import print_provenance

    file = _provenance_options(load_provenance_config(config), suspects, references, model, lora, base, out)
    result = run_provenance(file)
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
        return
    print_provenance(result)
    typer.echo(f"report: {run_dir_of(file) / 'report.html'} (beside report.md and provenance.json)")


def _provenance_options(
    file: ProvenanceFile,
    suspects: Path | None,
    references: Path | None,
    model: str | None,
    lora: Path | None,
    base: str | None,
    out: Path | None,
) -> ProvenanceFile:
    """The provenance file with the command's arguments set, validated as a file is."""
    from diffmia.config import ProvenanceFile

    data = file.model_dump(mode="json", exclude_none=True)
    section = data["provenance"]
    given = {"suspects": suspects, "references": references, "base_model": base}
    section.update({k: str(v) for k, v in given.items() if v is not None})
    if out is not None:
        section.update(runs_dir=str(out.parent), name=out.name)
    if model is not None or lora is not None:
        target = data["target"] if data["target"].get("kind", "diffusers") == "diffusers" else {}
        target.update({"kind": "diffusers", **({"model": model} if model else {}), "lora": str(lora) if lora else None})
        data["target"] = {k: v for k, v in target.items() if v is not None}
    return validated(ProvenanceFile, data, "options")


@app.command("set-test")
def set_test_command(
    run_dir: Annotated[
        Path, typer.Argument(help="A run directory written by `diffmia run` or `diffmia demo`.", file_okay=False)
    ],
    candidates: Annotated[
        str | None,
        typer.Option(
            help="The set to test: 'members' or 'nonmembers' of the run, or a text file of sample ids (one per "
            "line). It is tested against the run's non-members that are not candidates. Without it: how the test "
            "behaves with the set size, on random member and non-member sets."
        ),
    ] = None,
    scenario: Annotated[str | None, typer.Option(help="Scenario of the scores. [default: the run's first]")] = None,
    channel: Annotated[
        str | None, typer.Option(help="Query channel of the scores. [default: combined, or the only one]")
    ] = None,
    attack: Annotated[str | None, typer.Option(help="Attack of the scores. [default: classifier]")] = None,
    k: Annotated[
        list[int] | None,
        typer.Option("--k", help="Set size for the curve; repeat for several. [default: 1 2 5 10 20 50 that fit]"),
    ] = None,
    repeats: Annotated[int, typer.Option(help="Random sets per size and kind, for the curve.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the random sets.")] = 0,
    as_json: JsonOption = False,
) -> None:
    """Dataset-level inference: was a set of images, as a whole, in the target's training data?

    Combines the per-image scores of a finished run into one one-sided rank test (Mann-Whitney U) against reference
    non-members and reports a p-value. Results are saved to RUN_DIR/set-test.json.
    """

    from diffmia.report.terminal import print_set_test

    scores = load_run_scores(run_dir, scenario, channel, attack)
    report = run_set_test(scores, candidates, k, repeats=repeats, seed=seed)
    write_json(Path(run_dir) / "set-test.json", report.to_dict())
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
        return
    print_set_test(report)


@cache_app.command("verify")
def cache_verify(
    directory: Annotated[Path, typer.Argument(help="A generation cache folder.", file_okay=False)],
) -> None:
    """Check every cached image against its sidecar; exit 1 if any entry is damaged."""

    if not directory.is_dir():
        raise DiffmiaError(f"cache folder {directory} does not exist")
    entries, problems = GenerationCache(directory).verify()
    damaged = [p for p in problems if not p.problem.startswith("image without sidecar")]
    for problem in problems:
        typer.echo(f"{problem.key}: {problem.problem}")
    typer.echo(f"{entries} entries, {len(damaged)} damaged, {len(problems) - len(damaged)} interrupted writes")
    if damaged:
        raise typer.Exit(1)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (2 for a DiffmiaError or a usage error)."""
    try:
        # standalone mode: usage errors print themselves and exit 2, success exits 0, both by SystemExit;
        # every other exception comes through to us
        app(args=list(argv) if argv is not None else None, prog_name="diffmia")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except DiffmiaError as exc:
        message = " ".join(str(exc).split("\n"))
        print(f"Error: {message}", file=sys.stderr)
        return 2
    return 0
