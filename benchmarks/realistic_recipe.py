"""How much a LoRA fine-tune of the shipped base memorises, by adapter and passes over the members.

The realistic preset (`diffmia demo --preset realistic`) needs a LoRA recipe that memorises measurably: the gray-box
loss attack (the denoising loss at fixed timesteps, read from the weights) must reach AUC 0.9 on the target, at the
fewest passes over the member set. This fine-tunes the shipped base on 200 private digits, for each adapter and
number of passes, and scores those 200 members against 200 non-members with the gray-box loss attack (the base model
scored the same way is the control). Each row is its own seeded fine-tune (constant learning rate, so a row with
more passes continues the trajectory of the row before it).

Run: python benchmarks/realistic_recipe.py [--adapters attention transformer locon] [--passes 10 20 40 80]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _digits import private_split, write_folder
from PIL import Image

from diffmia.attacks.baselines import graybox_scores
from diffmia.config import FinetuneConfig
from diffmia.lab.finetune import finetune, load_pipeline
from diffmia.metrics import roc_auc, tpr_at_fpr

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
TRANSFORMER = [*ATTENTION, "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]  # every linear layer of the blocks
ADAPTERS = {  # name: (rank, target modules)
    "attention": (8, ATTENTION),  # diffusers' train_text_to_image_lora.py
    "transformer": (8, TRANSFORMER),  # kohya's LoRA (LierLa): the transformer blocks' linear layers
    "transformer+time": (8, [*TRANSFORMER, "time_emb_proj"]),
    "locon": (8, [*TRANSFORMER, "conv1", "conv2"]),  # LoCon / LoRA-C3Lier: the ResNet blocks' 3x3 convs too
}


def graybox_auc(pipe, pixels, records, members, nonmembers) -> tuple[float, float]:
    queries = members + nonmembers
    images = [Image.fromarray(pixels[i]) for i in queries]
    scores = graybox_scores(pipe, images, [records[i]["caption"] for i in queries], "loss")
    labels = [1] * len(members) + [0] * len(nonmembers)
    return roc_auc(scores, labels), tpr_at_fpr(scores, labels, 0.01).tpr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", nargs="+", default=list(ADAPTERS), choices=list(ADAPTERS))
    parser.add_argument("--passes", nargs="+", type=int, default=[10, 20, 40, 80])
    parser.add_argument("--rank", type=int, help="override every adapter's rank")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--members", type=int, default=200)
    args = parser.parse_args()

    pixels, records, members, nonmembers = private_split(args.members, 200)
    print(f"{args.members} members, {len(nonmembers)} non-members, lr {args.learning_rate:g}, batch {args.batch_size}")
    print("| adapter | rank | passes | steps | fine-tune s | gray-box AUC | TPR@1%FPR |")
    print("|---|---|---|---|---|---|---|")
    base_auc, base_tpr = graybox_auc(load_pipeline("builtin"), pixels, records, members, nonmembers)
    print(f"| (base model) | - | 0 | 0 | - | {base_auc:.3f} | {base_tpr:.3f} |", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_folder(Path(tmp) / "members", pixels, records, members)
        for name in args.adapters:
            rank, modules = ADAPTERS[name]
            rank = args.rank or rank
            for passes in args.passes:
                recipe = FinetuneConfig(
                    method="lora",
                    lora_rank=rank,
                    lora_target_modules=modules,
                    epochs=passes,
                    learning_rate=args.learning_rate,
                    batch_size=args.batch_size,
                )
                out = Path(tmp) / f"{name}-{passes}"
                began = time.perf_counter()
                finetune("builtin", data, out, recipe, show_progress=False)
                seconds = time.perf_counter() - began
                pipe = load_pipeline("builtin")
                pipe.load_lora_weights(out / "lora")
                auc, tpr = graybox_auc(pipe, pixels, records, members, nonmembers)
                steps = recipe.total_steps(len(members))
                print(f"| {name} | {rank} | {passes} | {steps} | {seconds:.0f} | {auc:.3f} | {tpr:.3f} |", flush=True)


if __name__ == "__main__":
    main()
