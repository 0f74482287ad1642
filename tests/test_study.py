"""`diffmia study`: one factor at a time from a base audit, shared models and generations, tables and plots."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from diffmia.cli import main
from diffmia.config import load_study
from diffmia.errors import ConfigError, TargetError
from diffmia.study import plan_study, run_study

BASE = """
[audit]
finetune_target = true
scenarios = ["III"]
exposed = 2

[data]
builtin_members = 20
builtin_nonmembers = 20

[finetune]
max_steps = 60
batch_size = 20
learning_rate = 1e-3
checkpoint_every = 0

[generation]
channels = ["text2img"]
queries_per_image = 2
steps = 5
guidance = 3.0

[target]
batch_size = 40

[evaluation]
n_bootstrap = 100
"""

STUDY = """
[study]
name = "tiny"
runs_dir = "{root}/studies"
base = "{root}/base.toml"

[[study.factors]]
name = "queries per image"
key = "generation.queries_per_image"
values = [2, 1]

[[study.factors]]
name = "fine-tuning steps"
key = "finetune.max_steps"
values = [60, 20]
"""

LEVELS = [
    ("queries per image", "2"),
    ("queries per image", "1"),
    ("fine-tuning steps", "60"),
    ("fine-tuning steps", "20"),
]


def _write(tmp_path, study=STUDY):
    (tmp_path / "base.toml").write_text(BASE)
    (tmp_path / "study.toml").write_text(study.format(root=tmp_path))
    return tmp_path / "study.toml"


def test_plan_and_bad_studies(tmp_path, capsys):
    path = _write(tmp_path)
    runs = plan_study(load_study(path))
    assert [(r.factor, r.label) for r in runs] == LEVELS
    assert [r.config.generation.queries_per_image for r in runs] == [2, 1, 2, 2]
    assert [r.config.finetune.max_steps for r in runs] == [60, 60, 60, 20]
    assert {r.config.audit.models_dir for r in runs} == {str((tmp_path / "studies" / "models").resolve())}
    assert main(["study", str(path), "--dry-run"]) == 0
    assert "fine-tuning steps = 20: " in capsys.readouterr().out
    bad = STUDY.replace("finetune.max_steps", "finetune.max_stepz").replace("values = [2, 1]", 'values = [2, "x"]')
    with pytest.raises(ConfigError) as error:
        plan_study(load_study(_write(tmp_path, bad)))
    message = str(error.value)  # every bad level is reported, before anything runs
    assert "queries per image = x" in message and "generation.queries_per_image" in message
    assert "fine-tuning steps = 60" in message and "max_stepz: unknown key (did you mean 'max_steps'?)" in message
    assert not (tmp_path / "studies").exists()
    unset = STUDY.replace('key = "finetune.max_steps"', 'key = "finetune.max_steps"\nlabels = ["a"]')
    with pytest.raises(ConfigError, match="1 labels for 2 values"):
        load_study(_write(tmp_path, unset))


JOINT = """
[study]
name = "levers"
runs_dir = "{root}/studies"
base = "{root}/base.toml"

[[study.factors]]
name = "levers"
values = [{{}}, {{"features.calibrate" = true}},
          {{"features.calibrate" = true, "audit.captions_per_image" = 2, "audit.scenarios" = ["II", "IV"]}}]
labels = ["as it is", "calibrated", "calibrated, 2 captions"]
"""


def test_a_level_can_set_several_keys_together(tmp_path):
    runs = plan_study(load_study(_write(tmp_path, JOINT)))
    assert [r.label for r in runs] == ["as it is", "calibrated", "calibrated, 2 captions"]
    assert [r.config.features.calibrate for r in runs] == [False, True, True]
    assert [r.config.audit.captions_per_image for r in runs] == [1, 1, 2]
    assert [r.config.audit.scenarios for r in runs] == [["III"], ["III"], ["II", "IV"]]
    assert {r.config.finetune.max_steps for r in runs} == {60}  # the rest is the base's
    for bad, message in [
        (JOINT.replace('labels = ["as it is", "calibrated", "calibrated, 2 captions"]', ""), "give its levels labels"),
        (JOINT.replace('{{"features.calibrate" = true}},', "true,"), "tables of dotted keys as levels, not True"),
        (JOINT.replace('{{"features.calibrate" = true}}', '{{"calibrate" = true}}'), "'calibrate' is not a dotted"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_study(_write(tmp_path, bad))
    wrong = JOINT.replace('"features.calibrate" = true}},', '"features.calibrat" = true}},')
    with pytest.raises(ConfigError, match=r"levers = calibrated: .*calibrat: unknown key"):
        plan_study(load_study(_write(tmp_path, wrong)))


def test_a_study_can_start_from_either_built_in_audit(tmp_path):
    for base, members in [("demo", 100), ("demo-realistic", 200)]:
        study = JOINT.replace('base = "{root}/base.toml"', f'base = "{base}"')
        runs = plan_study(load_study(_write(tmp_path, study)))
        assert {r.config.data.builtin_members for r in runs} == {members}


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parent.parent / "examples" / "studies").glob("*.toml")), ids=lambda p: p.stem
)
def test_example_studies_plan_one_valid_audit_per_level(path):
    study = load_study(path)
    runs = plan_study(study)
    assert len(runs) == sum(len(f.values) for f in study.study.factors) >= 1
    if path.stem == "shadow-family":
        assert [r.config.audit.shadow_base_model for r in runs] == [None, "runs/studies/bases/unet3/pipeline"]
        assert {r.config.audit.base_model for r in runs} == {"builtin"}  # the control stays the target's base
    sdxl = "runs/studies/bases/sdxl/pipeline"
    if path.stem == "shadow-family-sdxl":  # an SD 1.x target, shadows of its own layout or of the SDXL family
        assert [(r.config.audit.base_model, r.config.audit.shadow_base_model) for r in runs] == [
            ("builtin", None),
            ("builtin", sdxl),
        ]
    if path.stem == "shadow-family-sdxl-target":  # the reverse: an SDXL-family target, SD 1.x shadows
        assert [(r.config.audit.base_model, r.config.audit.shadow_base_model) for r in runs] == [
            (sdxl, None),
            (sdxl, "builtin"),
        ]


def test_a_missing_model_folder_stops_the_study_before_its_first_level(tmp_path):
    missing = tmp_path / "not-pretrained" / "pipeline"
    study = STUDY.replace('key = "finetune.max_steps"', 'key = "audit.shadow_base_model"').replace(
        "values = [60, 20]", f'values = ["unset", "{missing}"]'
    )
    with pytest.raises(
        TargetError,
        match=rf"fine-tuning steps = {re.escape(str(missing))}: audit.shadow_base_model "
        r"= .*: no such folder",
    ):
        run_study(load_study(_write(tmp_path, study)), show_progress=False)
    assert not (tmp_path / "studies").exists()


@pytest.mark.slow
def test_study_shares_models_and_generations_and_tabulates_each_factor(tmp_path, capsys):
    path = _write(tmp_path)
    assert main(["study", str(path)]) == 0
    captured = capsys.readouterr()
    root = tmp_path / "studies" / "tiny"
    output = json.loads((root / "study.json").read_text())
    records = output["runs"]
    assert [(r["factor"], r["level"]) for r in records] == LEVELS
    # the 60-step level of the second factor is the first factor's base level: run once, reported twice
    assert records[2]["run_dir"] == records[0]["run_dir"]
    assert "the same audit as" in captured.err
    # one model store: a target and a shadow per fine-tuning recipe (60 and 20 steps), nothing trained twice
    assert len(list((root.parent / "models").glob("*/card.json"))) == 4
    assert not list((root / "runs").glob("*/models"))
    # one generation cache: 40 images x 2 queries for the base, the 60-step target and shadow, the 20-step target
    # and shadow; one query per image (m = 1) and the generation-quality check need no new image
    assert len(list((root.parent / "cache").glob("*/*.png"))) == 5 * 40 * 2
    # every table cell is the run's own headline number (scenario III, the channel and attack its shadows chose)
    headline = {}
    for record in records:
        result = json.loads((tmp_path / record["run_dir"] / "result.json").read_text())
        (ev,) = [
            r["evaluation"]
            for r in result["results"]
            if [r["scenario"], r["model"], r["channel"], r["attack"]] == ["III", "target", *result["headline"]["III"]]
        ]
        table = root / f"{'queries-per-image' if record['factor'].startswith('q') else 'fine-tuning-steps'}.md"
        row = re.search(rf"^\| {record['level']} \| (\S+) \[", table.read_text(), re.M)
        assert row is not None and row.group(1) == f"{ev['auc']:.3f}"
        headline[record["factor"], record["level"]] = ev["auc"]
        quality = record["generation_quality"]
        assert quality["target"]["generations"] == 20 * result["queries_per_image"]
        assert 0 <= quality["target"]["digit_accuracy"] <= 1 and quality["target"]["frechet_distance"] >= 0
    # the measured direction: a third of the fine-tuning leaks less (measured AUC 1.000 at 60 steps, 0.935 at 20)
    assert headline["fine-tuning steps", "60"] > 0.98
    assert headline["fine-tuning steps", "20"] < headline["fine-tuning steps", "60"] - 0.03
    # the base model is the same in every run, so its generation quality is too
    assert len({json.dumps(r["generation_quality"]["base"]) for r in records if r["level"] != "1"}) == 1
    for name in ("queries-per-image", "fine-tuning-steps"):
        with Image.open(root / f"{name}.png") as figure:
            assert figure.size[0] > 300
    assert "### fine-tuning steps" in captured.out


@pytest.mark.slow
def test_shadows_of_another_model_family_change_the_fitted_attacks_but_not_the_target(tmp_path):
    """Factor ``audit.shadow_base_model``: shadows fine-tuned from a base of another architecture. The target, its
    features and the base-model control are the same at both levels; only what is fitted on shadows can move."""
    from diffmia.lab.pipeline import TinySDConfig, build_pipeline

    other = tmp_path / "other-family" / "pipeline"
    family = TinySDConfig(
        vae_channels=(16, 32, 32),
        unet_channels=(16, 32, 64),
        unet_layers_per_block=1,
        text_width=32,
        text_layers=1,
        text_heads=2,
    )
    build_pipeline(["a handwritten digit"], family, seed=3).save_pretrained(other)
    head = STUDY.split("[[study.factors]]")[0]
    factor = f'name = "shadow family"\nkey = "audit.shadow_base_model"\nvalues = ["unset", "{other}"]\n'
    study = head + '[study.fixed]\n"audit.base_control" = true\n"attacks.threshold.standardize" = false\n\n'
    study += "[[study.factors]]\n" + factor
    study += 'labels = ["same", "other"]\n'
    assert main(["study", str(_write(tmp_path, study))]) == 0
    root = tmp_path / "studies" / "tiny"
    same, changed = json.loads((root / "study.json").read_text())["runs"]
    # one target for both levels, and one shadow per base model, each fine-tuned from its own base
    cards = [json.loads(p.read_text()) for p in sorted((root.parent / "models").glob("*/card.json"))]
    assert sorted(c["base_model"] for c in cards) == sorted(["builtin", "builtin", str(other)])
    results = {}
    for record in (same, changed):
        result = json.loads((tmp_path / record["run_dir"] / "result.json").read_text())
        assert result["models"]["shadow-disjoint-0"]["base_model"] == ("builtin" if record is same else str(other))
        results[record["level"]] = {
            (r["model"], r["attack"]): r["evaluation"] for r in result["results"] if r["channel"] == "text2img"
        }
    # the raw threshold attack (the study fixes standardize = false) reads the target's own features in a fixed
    # direction: no shadow can change its AUC (standardized, the shadow sets each column's sign and scale)
    for model in ("target", "base"):
        assert results["same"][(model, "threshold")]["auc"] == results["other"][(model, "threshold")]["auc"]
    assert results["same"][("target", "threshold")]["auc"] > 0.7
    # the classifier is fitted on the shadows' features, which come from another model
    assert results["same"][("target", "classifier")] != results["other"][("target", "classifier")]
    # the other base's own generation quality is measured (20 non-member captions x 2 queries) and tabulated
    assert "shadow-base" not in same["generation_quality"]
    assert changed["generation_quality"]["shadow-base"]["generations"] == 40
    table = (root / "shadow-family.md").read_text()
    assert 'The shadows\' own base model, not fine-tuned, at level "other": digit accuracy' in table
