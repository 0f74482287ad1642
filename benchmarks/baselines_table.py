"""Every attack of a run side by side, for scenarios I and III: the reference attacks (all channels, fitted on the
shadows) and the shadow-free baselines, on the target and on the un-fine-tuned base model.

Run: python benchmarks/baselines_table.py runs/studies/baselines/runs/baselines-all-four
(benchmarks/studies.sh writes its output to docs/studies/baselines-by-attack.md)
"""

from __future__ import annotations

import sys

from diffmia.results import load_run

ATTACKS = {
    ("combined", "threshold"): "threshold (reference, fitted on the shadow)",
    ("combined", "distribution"): "distribution (reference)",
    ("combined", "classifier"): "classifier (reference)",
    ("none", "gan-leaks"): "GAN-Leaks: nearest of 500 caption-free generations",
    ("weights", "loss"): "gray-box loss (weights)",
    ("weights", "secmi"): "gray-box SecMI (weights)",
    ("weights", "pia"): "gray-box PIA (weights)",
}


def main() -> None:
    run = load_run(sys.argv[1])
    scenarios = [s for s in ("I", "III") if s in run.scenarios]
    head = ["attack"] + [f"{s}: {w}" for s in scenarios for w in ("target AUC [95% CI], TPR@1%", "base model")]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for (channel, attack), name in ATTACKS.items():
        cells = [name]
        for scenario in scenarios:
            found = (run.find(scenario, model, channel, attack) for model in ("target", "base"))
            target, base = (s.evaluation for s in found if s is not None)
            ci, tpr = target.auc_interval, target.tpr_at_fpr[0].tpr
            cells += [f"{target.auc:.3f} [{ci.low:.3f}, {ci.high:.3f}], {tpr:.2f}", f"{base.auc:.3f}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
