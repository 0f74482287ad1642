"""Membership signal of the lab's default fine-tuning recipe on the built-in model.

Fine-tunes the shipped base on 100 private digits (members) and compares them with 100 other private digits
(non-members), for the base model (control: should be ~0.5) and the fine-tune:
- image-to-image at strength 0.5, the member's own caption as prompt, 2 seeds: score = -mean pixel L2;
- text-to-image from the image's own caption, m = 3 seeds: score = -min pixel L2 (best similarity);
- memorisation: share of generations from a member's caption whose nearest digit (pixel L2, all 1,797) is
  that very member.
Run: python benchmarks/lab_membership.py [--steps 1000 250 ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _digits import private_split, write_folder
from PIL import Image

from diffmia.config import FinetuneConfig
from diffmia.lab.finetune import finetune, load_pipeline
from diffmia.metrics import roc_auc, tpr_at_fpr


def _images(out: np.ndarray) -> np.ndarray:
    return np.round(out * 255).astype(np.uint8)


def generate(pipe, prompts, seeds, steps, guidance, init=None, strength=None):
    images = []
    for start in range(0, len(prompts), 25):
        kwargs = {"num_inference_steps": steps, "guidance_scale": guidance, "output_type": "np"}
        if init is not None:
            kwargs |= {"image": [Image.fromarray(x) for x in init[start : start + 25]], "strength": strength}
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds[start : start + 25]]
        images.append(_images(pipe(prompts[start : start + 25], generator=generators, **kwargs).images))
    return np.concatenate(images)


def l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(((a.astype(float) - b.astype(float)) ** 2).reshape(len(a), -1).mean(axis=1))


def measure(model, lora, pixels, records, queries, labels, members, m, guidance, i2i_steps, t2i_steps):
    from diffusers import StableDiffusionImg2ImgPipeline

    t2i = load_pipeline(model)
    if lora is not None:
        t2i.load_lora_weights(lora)
    t2i.set_progress_bar_config(disable=True)
    i2i = StableDiffusionImg2ImgPipeline(**t2i.components)
    i2i.set_progress_bar_config(disable=True)
    prompts = [records[i]["caption"] for i in queries]
    x = pixels[queries]
    start = time.perf_counter()
    i2i_dist = np.mean(
        [l2(generate(i2i, prompts, np.arange(len(x)) + 1000 * s, i2i_steps, guidance, x, 0.5), x) for s in range(2)],
        axis=0,
    )
    t2i_gens = [generate(t2i, prompts, np.arange(len(x)) + 1000 * s, t2i_steps, guidance) for s in range(m)]
    t2i_dist = np.min([l2(g, x) for g in t2i_gens], axis=0)
    flat = pixels.reshape(len(pixels), -1).astype(float)
    member_rows = [k for k, i in enumerate(queries) if i in set(members)]
    hits = []
    for g in t2i_gens:
        for k in member_rows:
            nearest = int(np.argmin(((flat - g[k].reshape(-1).astype(float)) ** 2).sum(axis=1)))
            hits.append(nearest == queries[k])
    results = {}
    for name, distance in (("image-to-image", i2i_dist), ("text-to-image", t2i_dist)):
        score = -distance
        results[name] = (roc_auc(score, labels), tpr_at_fpr(score, labels, 0.01).tpr)
    return results, float(np.mean(hits)), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[500], help="fine-tuning steps to measure")
    parser.add_argument("--method", default="full", choices=["full", "lora"])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--lora-targets", nargs="+", help="LoRA target modules [default: the recipe's attention]")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--m", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-4, help="fine-tuning learning rate")
    parser.add_argument("--sampling-steps", type=int, default=25, help="text-to-image sampling steps (img2img: 20)")
    args = parser.parse_args()
    pixels, records, members, nonmembers = private_split(100, 100)
    queries = members + nonmembers
    labels = np.r_[np.ones(100, bool), np.zeros(100, bool)]
    common = (
        pixels,
        records,
        queries,
        labels,
        members,
        args.m,
        args.guidance,
        min(20, args.sampling_steps),
        args.sampling_steps,
    )
    rows = [("base (control)", *measure("builtin", None, *common))]
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_folder(Path(tmp) / "members", pixels, records, members)
        for steps in args.steps:
            recipe = FinetuneConfig(
                method=args.method,
                lora_rank=args.rank,
                max_steps=steps,
                learning_rate=args.lr,
                **({"lora_target_modules": args.lora_targets} if args.lora_targets else {}),
            )
            began = time.perf_counter()
            out = finetune("builtin", folder, Path(tmp) / f"ft-{steps}", recipe)
            tune_seconds = time.perf_counter() - began
            model, lora = (out / "pipeline", None) if args.method == "full" else ("builtin", out / "lora")
            rows.append((f"{args.method} {steps} steps ({tune_seconds:.0f} s)", *measure(model, lora, *common)))
    print(
        f"100 members / 100 non-members, guidance {args.guidance}, m = {args.m}, lr {args.lr}, "
        f"{args.sampling_steps} sampling steps; AUC (TPR@1%FPR)"
    )
    for name, results, memorised, seconds in rows:
        cells = "  ".join(f"{k}: {auc:.3f} ({tpr:.2f})" for k, (auc, tpr) in results.items())
        print(f"{name:<28} {cells}  memorised: {memorised:.3f}  [{seconds:.0f} s of queries]")


if __name__ == "__main__":
    main()
