"""How well do the built-in captioners caption unseen digits?

Held-out: 300 private digits. Three captioners, each measured on them:
- the shipped ``builtin`` tiny BLIP (trained from scratch on the 1,197 public digits) as it is;
- ``builtin`` fine-tuned on 300 *other* private digits (the attacker's auxiliary data D'), the demo's recipe;
- ``tiny``: a BLIP trained from scratch on those 300 auxiliary digits alone (``--scratch-steps``).
Prints the share of captions naming the right digit and each attribute (chance: 0.10 for the digit,
0.20-0.33 for the attributes).
Run: python benchmarks/captioner_quality.py [--scratch-steps 3000] [--finetune-steps 200]
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
    parser.add_argument("--scratch-steps", type=int, default=3000, help="steps of the from-scratch tiny BLIP (0: skip)")
    parser.add_argument("--finetune-steps", type=int, default=CaptionerTrainingConfig().max_steps)
    args = parser.parse_args()
    pixels, records, auxiliary, held_out = private_split(300, 300, seed=1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        aux = write_folder(Path(tmp) / "aux", pixels, records, auxiliary)
        test = write_folder(Path(tmp) / "test", pixels, records, held_out)
        samples = load_image_folder(test).samples
        reference = [s.caption or "" for s in samples]

        def measure(name: str, folder: str | Path, seconds: float) -> None:
            captions = BlipCaptioner(folder, max_length=32).caption(samples)
            rows.append((name, seconds, caption_agreement(captions, reference), captions[0]))

        measure("builtin (public digits), as shipped", "builtin", 0.0)
        began = time.perf_counter()
        recipe = CaptionerTrainingConfig(max_steps=args.finetune_steps)
        tuned = finetune_captioner("builtin", aux, Path(tmp) / "tuned", recipe, show_progress=False)
        measure(f"builtin + {args.finetune_steps} steps on 300 aux", tuned, time.perf_counter() - began)
        if args.scratch_steps:
            began = time.perf_counter()
            recipe = CaptionerTrainingConfig(max_steps=args.scratch_steps, learning_rate=1e-3, lr_warmup_steps=100)
            scratch = finetune_captioner("tiny", aux, Path(tmp) / "scratch", recipe, show_progress=False)
            measure(f"tiny from scratch, {args.scratch_steps} steps on 300 aux", scratch, time.perf_counter() - began)
    print(f"300 held-out private digits; e.g. reference {reference[0]!r}")
    for name, seconds, agreement, example in rows:
        print(f"{name:<44} ({seconds:4.0f} s): " + ", ".join(f"{k} {v:.3f}" for k, v in agreement.items()))
        print(f"{'':<44}  e.g. {example!r}")


if __name__ == "__main__":
    main()
