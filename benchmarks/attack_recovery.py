"""How close each attack model comes to the Bayes AUC on two Gaussians, and how that depends on the noise.

Members and non-members: 100 each to fit, a fresh 100 each to score, unit variances, Mahalanobis distance
delta between the classes (Bayes AUC = Phi(delta / sqrt(2))). Two noise structures in d dimensions:
- "correlated": correlation 0.5 between all features (one shared factor, like per-patch similarity scores);
- "isotropic": independent features, the shift spread evenly over all d of them.
Prints mean and minimum AUC over seeded repeats. Not a test; run: python benchmarks/attack_recovery.py
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from scipy.stats import norm

from diffmia.attacks import ClassifierAttack, DistributionAttack, ThresholdAttack
from diffmia.metrics import roc_auc

ATTACKS = {
    "threshold": ThresholdAttack,
    "threshold (raw columns)": lambda: ThresholdAttack(standardize=False),
    "distribution (diagonal)": DistributionAttack,
    "distribution (scalar)": lambda: DistributionAttack(covariance="scalar"),
    "distribution (full, LW)": lambda: DistributionAttack(covariance="full"),
    "classifier (MLP)": ClassifierAttack,
}


def draw(d: int, delta: float, n: int, rho: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    shift = delta / math.sqrt(d / (1 + (d - 1) * rho))

    def one(c: float) -> np.ndarray:
        return rng.standard_normal((n, 1)) * math.sqrt(rho) + rng.standard_normal((n, d)) * math.sqrt(1 - rho) + c

    return np.vstack([one(shift), one(0.0)]), np.r_[np.ones(n, int), np.zeros(n, int)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--attacks", nargs="+", choices=list(ATTACKS), default=list(ATTACKS))
    args = parser.parse_args()
    attacks = {name: ATTACKS[name] for name in args.attacks}
    print(f"{'noise':<11} {'d':>4} {'delta':>5} {'Bayes':>6}  " + "  ".join(f"{n:>23}" for n in attacks))
    for rho, noise in ((0.5, "correlated"), (0.0, "isotropic")):
        for d in (1, 16, 768):
            if d == 1 and rho == 0.0:
                continue
            for delta in (1.0, 2.0, 2.7, 3.3):
                aucs: dict[str, list[float]] = {name: [] for name in attacks}
                seconds = dict.fromkeys(attacks, 0.0)
                for seed in range(args.repeats):
                    rng = np.random.default_rng([d, int(delta * 10), seed, int(rho * 10)])
                    X_fit, y_fit = draw(d, delta, 100, rho, rng)
                    X_new, y_new = draw(d, delta, 100, rho, rng)
                    for name, make in attacks.items():
                        start = time.perf_counter()
                        attack = make().fit(X_fit, y_fit)
                        seconds[name] += time.perf_counter() - start
                        aucs[name].append(roc_auc(attack.decision_function(X_new), y_new))
                bayes = norm.cdf(delta / math.sqrt(2))
                cells = "  ".join(
                    f"{np.mean(v):.3f} (min {np.min(v):.3f}) {seconds[k] / args.repeats:4.2f}s" for k, v in aucs.items()
                )
                print(f"{noise:<11} {d:>4} {delta:>5} {bayes:>6.3f}  {cells}")


if __name__ == "__main__":
    main()
