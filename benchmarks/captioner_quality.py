"""How well does the tiny captioner, trained from scratch on auxiliary digits, caption unseen digits?

Trains `diffmia finetune-captioner --model tiny` on 300 private digits (the attacker's auxiliary data) and
captions 300 other private digits; prints the share of captions naming the right digit and each attribute.
Run: python benchmarks/captioner_quality.py [--steps 2000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _digits import private_split, write_folder

from diffmia.captioners import BlipCaptioner
from diffmia.config import CaptionerTrainingConfig
from diffmia.data import load_image_folder
from diffmia.lab.captioner import caption_agreement, finetune_captioner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=CaptionerTrainingConfig().max_steps)
    args = parser.parse_args()
    pixels, records, auxiliary, held_out = private_split(300, 300, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        aux = write_folder(Path(tmp) / "aux", pixels, records, auxiliary)
        test = write_folder(Path(tmp) / "test", pixels, records, held_out)
        began = time.perf_counter()
        folder = finetune_captioner("tiny", aux, Path(tmp) / "cap", CaptionerTrainingConfig(max_steps=args.steps))
        seconds = time.perf_counter() - began
        samples = load_image_folder(test).samples
        captions = BlipCaptioner(folder, max_length=32).caption(samples)
    agreement = caption_agreement(captions, [s.caption or "" for s in samples])
    print(f"tiny BLIP, {args.steps} steps on 300 auxiliary digits ({seconds:.0f} s); 300 held-out digits:")
    print("  " + ", ".join(f"{name} {share:.3f}" for name, share in agreement.items()))
    print(f"  e.g. {captions[0]!r} for {samples[0].caption!r}")


if __name__ == "__main__":
    main()
