"""``diffmia provenance`` measured on the realistic preset's target: validity, power, gray-box, shift and cost.

Reads a finished run of the realistic preset (``diffmia demo --preset realistic``: a LoCon LoRA on 200 members of
the bundled digits, 200 non-members), queries its target and its base model for all 400 candidates once, as
``diffmia provenance`` does (the preset's channels, seeds and prompts: the given captions, or the shipped captioner
as it is; base-calibrated features; the gray-box scores where the weights are read), and then draws, with a seed:

- **validity**: k suspects drawn from the non-members against 100 other non-members: the share of p < 0.05 and of
  p < 0.01, on the target's features and on the base model's (``--null-draws``, 1,000 per row);
- **power**: k suspects drawn from the members against 100 non-members: the share of p < 0.01, with captions and
  without, black-box and with the weights; beside it, the set test of today (``diffmia set-test``) on the preset's
  own audit, for the same draws;
- **shift**: suspects of digits 0-4 against references of digits 5-9, all non-members: the share of draws whose
  verdict is "inconclusive" (a control strays).

Every test uses ``--permutations`` relabellings (the smallest p it can give is 1 / (1 + permutations)). Not a test.

    .venv/bin/python benchmarks/provenance.py runs/demo-realistic [--draws 200] [--null-draws 1000]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from diffmia.assets import resolve_captioner
from diffmia.audit.models import Model, base_model
from diffmia.audit.plan import make_encoders
from diffmia.audit.prompts import Prompts
from diffmia.captioners import BlipCaptioner
from diffmia.config import ProvenanceFile, load_config
from diffmia.data import load_image_folder
from diffmia.names import PromptSource
from diffmia.provenance.crossfit import crossfit_test
from diffmia.provenance.plan import ProvenancePlan
from diffmia.provenance.run import measure as run_measure
from diffmia.quiet import quiet_third_parties
from diffmia.settest import load_run_scores, set_test

KS = (5, 10, 20, 30, 50)
REFERENCES = 100


def measure(run: Path, source: PromptSource) -> dict[str, np.ndarray]:
    """Every candidate of the run under one prompt source, through ``diffmia provenance``'s own measurement
    (:func:`diffmia.provenance.run.measure`): the target's features with their base-calibrated twins, and with the
    weights the gray-box scores; the base model's; the images' own; with each candidate's membership and digit.
    The members stand as the suspects here; each draw below picks its own."""
    audit = load_config(run / "config.toml")
    splits = json.loads((run / "splits.json").read_text())["target"]
    folder = load_image_folder(run / "data" / "digits")
    by_id = folder.by_id()
    lora = run / "models" / "target" / "lora"
    file = ProvenanceFile.model_validate(
        {
            "target": {"model": audit.audit.base_model, "lora": str(lora)},
            "generation": audit.generation.model_dump(mode="json", exclude_none=True),
            "features": audit.features.model_dump(mode="json", exclude_none=True),
            "provenance": {"prompts": "given" if source is PromptSource.GIVEN else "captioner"},
        }
    )
    config = file.audit_config()
    (work := run / "provenance-benchmark").mkdir(exist_ok=True)
    target = Model("target", file.target.spec(), file.target.regime())
    plan = ProvenancePlan(
        file=file,
        config=config,
        run=run,  # the audit's cache and embeddings
        suspects=tuple(by_id[i] for i in splits["members"]),
        references=tuple(by_id[i] for i in splits["nonmembers"]),
        sources=(source,),
        target=target,
        base=base_model(config.audit.model_copy(update={"base_model": audit.audit.base_model}), file.target),
        encoders=make_encoders(config, run),
    )
    captioner = {PromptSource.CAPTIONER: BlipCaptioner(resolve_captioner("builtin"))}
    measured = run_measure(plan, Prompts(work, captioner), show_progress=False)
    ids = measured.target.sample_ids
    return {
        "ids": np.array(ids),
        "member": np.asarray(measured.target.y, dtype=bool),
        "digit": np.array([int(folder.extra[i]["label"]) for i in ids]),
        "target": measured.target.X[:, [not n.startswith("weights/") for n in measured.target.names]],
        "graybox": measured.target.X,
        "base": measured.base.X,
        "blind": measured.blind.X,
        "requested": np.array([measured.images_requested.get(n, 0) for n in ("target", "base")]),
    }


def _p(X: np.ndarray, suspects: np.ndarray, references: np.ndarray, permutations: int, seed: int) -> float:
    rows = np.r_[suspects, references]
    labels = np.r_[np.ones(len(suspects), bool), np.zeros(len(references), bool)]
    return crossfit_test(X[rows], labels, permutations=permutations, seed=seed).p_value


def _draw(m: dict[str, np.ndarray], k: int, members: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """k suspects (members, or non-members for the null) and REFERENCES other non-members."""
    outside = rng.permutation(np.flatnonzero(~m["member"]))
    if members:
        return rng.choice(np.flatnonzero(m["member"]), k, replace=False), outside[:REFERENCES]
    return outside[:k], outside[k : k + REFERENCES]


def rows(measured: dict[str, dict[str, np.ndarray]], run: Path, args: argparse.Namespace) -> list[dict[str, object]]:
    """Per k: validity (null draws) on the target and the base model; power (member draws) black-box and with
    the weights, with and without captions; the set test of the preset's own audit on the same draws."""
    audit = {"given": load_run_scores(run, "III"), "captioner": load_run_scores(run, "IV")}
    out = []
    for k in KS:
        row: dict[str, object] = {"k": k}
        for source, m in measured.items():
            rng = np.random.default_rng([args.seed, k, 1])
            index = {sample_id: i for i, sample_id in enumerate(audit[source].sample_ids)}
            null, power, grey, set_p = [], [], [], []
            for draw in range(args.null_draws):
                s, r = _draw(m, k, False, rng)
                null.append([_p(m[t], s, r, args.permutations, draw) for t in ("target", "base")])
            for draw in range(args.draws):
                s, r = _draw(m, k, True, rng)
                power.append(_p(m["target"], s, r, args.permutations, draw))
                grey.append(_p(m["graybox"], s, r, args.permutations, draw))
                scores = audit[source].scores
                picked = [index[i] for i in m["ids"][s]], [index[i] for i in m["ids"][r]]
                set_p.append(set_test(scores[picked[0]], scores[picked[1]]).p_value)
            p_null = np.array(null)
            row |= {
                f"{source}: null p<0.05 target": float(np.mean(p_null[:, 0] < 0.05)),
                f"{source}: null p<0.01 target": float(np.mean(p_null[:, 0] < 0.01)),
                f"{source}: null p<0.05 base": float(np.mean(p_null[:, 1] < 0.05)),
                f"{source}: null p<0.01 base": float(np.mean(p_null[:, 1] < 0.01)),
                f"{source}: members p<0.01 black-box": float(np.mean(np.array(power) < 0.01)),
                f"{source}: members p<0.01 gray-box": float(np.mean(np.array(grey) < 0.01)),
                f"{source}: members p<0.01 set-test on the audit": float(np.mean(np.array(set_p) < 0.01)),
            }
        out.append(row)
        print(json.dumps(row), flush=True)
    return out


def shift(measured: dict[str, np.ndarray], args: argparse.Namespace, k: int = 30, references: int = 70) -> float:
    """The share of draws whose verdict is inconclusive when the suspects are non-members of digits 0-4 and the
    references non-members of digits 5-9 (a control below 0.05)."""
    rng = np.random.default_rng([args.seed, 2])
    low = np.flatnonzero(~measured["member"] & (measured["digit"] < 5))
    high = np.flatnonzero(~measured["member"] & (measured["digit"] >= 5))
    inconclusive = 0
    for draw in range(args.draws):
        s, r = rng.choice(low, k, replace=False), rng.choice(high, references, replace=False)
        controls = [_p(measured[t], s, r, args.permutations, draw) for t in ("base", "blind")]
        inconclusive += min(controls) < 0.05
    return inconclusive / args.draws


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("diffmia").setLevel(logging.INFO)
    quiet_third_parties()
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("run", type=Path, help="a finished run directory of the realistic preset")
    parser.add_argument("--draws", type=int, default=200, help="member draws per row (power)")
    parser.add_argument("--null-draws", type=int, default=1000, help="non-member draws per row (validity)")
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    began = time.perf_counter()
    measured = {"given": measure(args.run, PromptSource.GIVEN), "captioner": measure(args.run, PromptSource.CAPTIONER)}
    seconds = time.perf_counter() - began
    requested = {source: m["requested"].tolist() for source, m in measured.items()}
    print(json.dumps({"measure seconds": round(seconds, 1), "images requested (target, base)": requested}))
    started = time.perf_counter()
    one = measured["given"]
    s, r = _draw(one, 50, True, np.random.default_rng(0))
    _p(one["target"], s, r, 1000, 0)
    print(json.dumps({"one test, 150 images, 1000 permutations, seconds": round(time.perf_counter() - started, 2)}))
    table = rows(measured, args.run, args)
    inconclusive = {source: shift(m, args) for source, m in measured.items()}
    print(json.dumps({"shift: inconclusive share": inconclusive}))
    out = args.run / "provenance-benchmark.json"
    out.write_text(json.dumps({"rows": table, "shift": inconclusive, "measure seconds": seconds}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
