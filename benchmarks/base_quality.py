"""Does the base model follow the prompt? 200 text-to-image generations from private-image captions.

Each generation is classified by the shipped digit classifier; prints the share showing the prompted digit
at each guidance scale. Run: python benchmarks/base_quality.py [--model builtin]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _digits import private_split

from diffmia.assets import CLASSIFIER_PATH
from diffmia.lab.classifier import DigitClassifier
from diffmia.lab.finetune import load_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, nargs="+", default=[3.0, 7.5])
    args = parser.parse_args()
    _, records, members, nonmembers = private_split(100, 100)
    chosen = (members + nonmembers)[:200]
    prompts = [records[i]["caption"] for i in chosen]
    labels = np.array([records[i]["label"] for i in chosen])
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    classifier = DigitClassifier.load(CLASSIFIER_PATH)
    for guidance in args.guidance:
        start = time.perf_counter()
        images = []
        for k in range(0, len(prompts), 20):
            generators = [torch.Generator().manual_seed(k + j) for j in range(20)]
            out = pipe(
                prompts[k : k + 20],
                num_inference_steps=args.steps,
                guidance_scale=guidance,
                generator=generators,
                output_type="np",
            ).images
            images.append(np.round(out * 255).astype(np.uint8))
        predicted = classifier.predict(np.concatenate(images))
        seconds = time.perf_counter() - start
        print(
            f"guidance {guidance}: {np.mean(predicted == labels):.3f} of {len(prompts)} generations show the prompted "
            f"digit ({args.steps} steps, {seconds / len(prompts):.3f} s/image)"
        )


if __name__ == "__main__":
    main()
