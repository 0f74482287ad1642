"""The audit: splits, validation before any query, and one end-to-end run on the built-in model."""

from __future__ import annotations

import asyncio
import collections
import json
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from diffmia.audit import run_audit
from diffmia.cli import main
from diffmia.config import load_config, parse_config
from diffmia.data import MembershipSplit, check_audit_data, load_image_folder, plan_auxiliary, write_subset
from diffmia.errors import ConfigError, DataError, TargetError
from diffmia.records import Sample
from loopback import serving

TINY_AUDIT = """
[audit]
name = "tiny"
runs_dir = "{runs}"
finetune_target = true
scenarios = ["I", "II", "III", "IV"]
exposed = 4
baselines = ["gan-leaks", "loss", "secmi", "pia"]
gan_leaks_samples = 40

[data]
builtin_members = 20
builtin_nonmembers = 20

[finetune]
max_steps = 100
batch_size = 20
learning_rate = 1e-3
checkpoint_every = 0

[captioner_training]
max_steps = 60
lr_warmup_steps = 10
checkpoint_every = 0

[generation]
channels = ["text2img", "img2img"]
queries_per_image = 2
steps = 5
guidance = 3.0

[target]
batch_size = 32

[evaluation]
n_bootstrap = 200
"""


def _samples(prefix: str, n: int) -> tuple[Sample, ...]:
    return tuple(Sample(f"{prefix}{i}", Path(f"{prefix}{i}.png"), f"caption {prefix}{i}") for i in range(n))


# --- splits ---------------------------------------------------------------------------------------------------


def test_overlapping_auxiliary_set_holds_the_requested_share_of_real_members():
    target = MembershipSplit(_samples("m", 30), _samples("n", 30))
    pool = _samples("a", 50)
    aux = plan_auxiliary(
        "overlap", target, pool, shadow_members=20, overlap=0.5, n_shadows=2, rng=np.random.default_rng(0)
    )
    ids = [s.id for s in aux.samples]
    assert len(ids) == 40 and len(set(ids)) == 40
    assert sum(i.startswith("m") for i in ids) == 20 == aux.n_target_members
    assert sum(i.startswith("a") for i in ids) == 20
    assert not any(i.startswith("n") for i in ids)  # non-members of the target never enter D'
    assert len(aux.shadow_splits) == 2
    for split in aux.shadow_splits:  # each shadow splits D' into halves
        assert len(split.members) == len(split.nonmembers) == 20
        assert {s.id for s in split.members} | {s.id for s in split.nonmembers} == set(ids)
    assert aux.shadow_splits[0] != aux.shadow_splits[1]
    again = plan_auxiliary(
        "overlap", target, pool, shadow_members=20, overlap=0.5, n_shadows=2, rng=np.random.default_rng(0)
    )
    assert again == aux  # seeded: the same D' and splits


def test_disjoint_auxiliary_set_has_no_target_image():
    target = MembershipSplit(_samples("m", 30), _samples("n", 30))
    aux = plan_auxiliary(
        "disjoint", target, _samples("a", 45), shadow_members=20, overlap=0.5, n_shadows=1, rng=np.random.default_rng(1)
    )
    assert all(s.id.startswith("a") for s in aux.samples) and len(aux.samples) == 40
    assert aux.n_target_members == 0


def test_auxiliary_set_sizes_are_checked():
    target = MembershipSplit(_samples("m", 15), _samples("n", 15))
    with pytest.raises(DataError, match=r"needs 40 auxiliary images but the auxiliary pool has 39"):
        plan_auxiliary(
            "disjoint",
            target,
            _samples("a", 39),
            shadow_members=20,
            overlap=0.5,
            n_shadows=1,
            rng=np.random.default_rng(0),
        )
    with pytest.raises(DataError, match=r"needs 20 real target members .* the target has 15"):
        plan_auxiliary(
            "overlap",
            target,
            _samples("a", 40),
            shadow_members=20,
            overlap=0.5,
            n_shadows=1,
            rng=np.random.default_rng(0),
        )


def test_membership_split_labels_members_first():
    split = MembershipSplit(_samples("m", 2), _samples("n", 3))
    assert [s.member for s in split.samples] == [True, True, False, False, False]
    assert split.to_dict() == {"members": ["m0", "m1"], "nonmembers": ["n0", "n1", "n2"]}


# --- validation before any query ----------------------------------------------------------------------------


def _folder(root: Path, values: list[int], captions: bool = True, start: int = 0) -> Path:
    """An image folder of flat grey 8x8 images, one per value (equal values, equal pixels)."""
    (root / "images").mkdir(parents=True)
    lines = []
    for i, value in enumerate(values):
        name = f"images/{root.name}-{start + i}.png"
        Image.new("L", (8, 8), value).save(root / name)
        record = {"file_name": name, "id": f"{root.name}-{start + i}"}
        if captions:
            record["caption"] = f"a grey square {value}"
        lines.append(json.dumps(record))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_bad_audit_data_is_reported_at_once(tmp_path):
    members = load_image_folder(_folder(tmp_path / "members", list(range(12)))).samples
    nonmembers = load_image_folder(_folder(tmp_path / "non", [5, *range(100, 108)], captions=False)).samples
    pool = load_image_folder(_folder(tmp_path / "aux", [107, *range(200, 230)])).samples
    with pytest.raises(DataError) as error:
        check_audit_data(members, nonmembers, pool, ["I", "IV"], members_need_captions=False)
    message = str(error.value)
    assert "9 non-members: an audit needs at least 10 of each" in message
    assert "members and non-members share images (same pixels): members-5 = non-0" in message
    assert "the auxiliary pool holds images of the target's data (same pixels): aux-0 = non-8" in message
    assert "9 non-members (scenario I queries with given captions) have no caption" in message
    # caption-free scenarios do not need the target's captions
    uncaptioned = load_image_folder(_folder(tmp_path / "non2", list(range(100, 110)), captions=False)).samples
    assert check_audit_data(members, uncaptioned, pool[1:], ["IV"], members_need_captions=False) is None


def _folders_config(tmp_path: Path, **audit: object) -> dict:
    members = _folder(tmp_path / "members", list(range(12)))
    nonmembers = _folder(tmp_path / "non", list(range(100, 112)))
    aux = _folder(tmp_path / "aux", list(range(200, 260)))
    return {
        "data": {"members": str(members), "nonmembers": str(nonmembers), "auxiliary": str(aux)},
        "audit": {"runs_dir": str(tmp_path / "runs"), "name": "bad", "shadow_members": 10, **audit},
    }


def test_a_shadow_folder_that_is_not_a_pipeline_fails_before_any_query(tmp_path):
    not_a_pipeline = tmp_path / "shadow"
    not_a_pipeline.mkdir()
    (not_a_pipeline / "weights.bin").write_bytes(b"")
    given = {"model": str(not_a_pipeline), "members": str(tmp_path / "members"), "nonmembers": str(tmp_path / "non")}
    config = parse_config(_folders_config(tmp_path, shadows=0, scenarios=["III"], given_shadows=[given]))
    with pytest.raises(TargetError, match=r"given_shadows\[0\]\.model = .*shadow' is not a diffusers pipeline folder"):
        run_audit(config)
    assert not (tmp_path / "runs" / "bad" / "config.toml").exists()  # a fixed config may use the folder
    assert not (tmp_path / "runs" / "bad" / "cache").exists()  # nothing was generated
    assert not (tmp_path / "runs" / "bad" / "models").exists()  # nothing was trained


def test_a_missing_shadow_base_model_fails_before_anything_is_written(tmp_path):
    config = parse_config(_folders_config(tmp_path, scenarios=["III"], shadow_base_model=str(tmp_path / "nowhere")))
    with pytest.raises(TargetError, match=r"audit.shadow_base_model = .*nowhere': no such folder"):
        run_audit(config)
    assert not (tmp_path / "runs" / "bad" / "config.toml").exists()
    with pytest.raises(ConfigError, match="shadow_base_model is set but no shadow is fine-tuned"):
        parse_config(
            {
                "audit": {
                    "shadows": 0,
                    "scenarios": ["III"],
                    "shadow_base_model": "builtin",
                    "given_shadows": [{"model": "m", "members": "a", "nonmembers": "b"}],
                }
            }
        )


def test_a_threshold_feature_is_checked_before_anything_runs(tmp_path):
    """`[attacks.threshold] reduce` naming a feature must name one the audit computes, without its channel; a column
    index (a different feature per channel's table) is refused; all before anything is written."""
    from diffmia.audit.plan import check_threshold_feature

    features = {
        "encoders": ["pixels", "hub/deit-tiny"],
        "distances": ["l2", "ssim"],
        "granularities": ["pooled", "token", "unit"],
        "aggregations": ["mean"],
    }

    def check(reduce):
        config = parse_config(
            {"features": features, "attacks": {"threshold": {"reduce": reduce}}, "audit": {"shadows": 4}}
        )
        check_threshold_feature(config)

    for fine in (
        "mean",
        "max",
        "pixels/l2/pooled/mean",
        "deit-tiny/l2/token017/mean",
        "deit-tiny/l2/unit0767/mean",
        "pixels/ssim/pooled/mean",
    ):
        check(fine)
    with pytest.raises(
        ConfigError,
        match=r"^attacks\.threshold\.reduce = 3 would be column 3 of each table, a "
        r"different feature in each channel's table and in the combined one: name the feature "
        r"instead \(e\.g\. 'pixels/l2/pooled/mean'\)$",
    ):
        check(3)
    with pytest.raises(
        ConfigError,
        match=r"^attacks\.threshold\.reduce 'img2img/pixels/l2/pooled/mean': name the "
        r"feature without its channel \('pixels/l2/pooled/mean'\)",
    ):
        check("img2img/pixels/l2/pooled/mean")
    with pytest.raises(
        ConfigError,
        match=r"^attacks\.threshold\.reduce 'pixels/l2/token001/mean' is none of the "
        r"features this audit computes: pixels/l2/pooled/mean, deit-tiny/l2/pooled/mean, "
        r"deit-tiny/l2/token###/mean, deit-tiny/l2/unit####/mean, pixels/ssim/pooled/mean \(# numbers "
        r"the encoder's tokens or hidden units\)$",
    ):
        check("pixels/l2/token001/mean")  # pixels have no tokens
    with pytest.raises(ConfigError, match="is none of the features"):
        check("deit-tiny/l2/token1/mean")
    with pytest.raises(ConfigError, match="is none of the features"):
        check("pixels/l2/pooled/mean-minus-base")
    features["calibrate"] = True  # the base-calibrated columns
    check("pixels/l2/pooled/mean-minus-base")
    with pytest.raises(ConfigError, match="is none of the features"):
        check("pixels/l2/pooled/mean-vs-outsiders")
    features["outsiders"] = True  # and the distances from the outsider shadows
    check("pixels/l2/pooled/mean-vs-outsiders")
    parse_config({"attacks": {"use": ["classifier"], "threshold": {"reduce": 3}}})  # unused: not checked
    config = parse_config(_folders_config(tmp_path, scenarios=["III"]) | {"attacks": {"threshold": {"reduce": "x"}}})
    with pytest.raises(ConfigError, match=r"^attacks\.threshold\.reduce 'x' is none of the features"):
        run_audit(config)
    assert not (tmp_path / "runs").exists()


def test_a_threshold_feature_takes_its_column_in_each_channel_and_their_mean_in_the_combined_table():
    from diffmia.attacks import fit_attacks
    from diffmia.audit.scoring import channel_attacks, channel_sets
    from diffmia.records import FeatureTable

    config = parse_config(
        {"attacks": {"use": ["threshold"], "threshold": {"reduce": "pixels/l2/pooled/mean", "standardize": False}}}
    )
    names = (
        "text2img/pixels/l2/pooled/mean",
        "text2img/pixels/ssim/pooled/mean",
        "img2img/pixels/l2/pooled/mean",
        "img2img/pixels/ssim/pooled/mean",
    )
    X = np.array([[0.0, 9.0, 3.0, 9.0], [1.0, 0.0, 0.0, 0.0], [2.0, 0.0, 4.0, 0.0], [3.0, 9.0, 1.0, 9.0]])
    y = np.array([False, False, True, True])
    table = FeatureTable(("a", "b", "c", "d"), X, names, y)
    picked = {}
    for channel, columns in channel_sets(names, ["text2img", "img2img"]).items():
        sub = FeatureTable(table.sample_ids, X[:, [names.index(n) for n in columns]], columns, y)
        attack = fit_attacks(channel_attacks(config, columns), sub)["threshold"]
        picked[channel] = [columns[i] for i in attack.columns_]
        if channel == "combined":  # the mean of both channels' l2 columns: 1.5, 0.5, 3, 2 -> members from 2
            assert attack.threshold_ == 1.75
    assert picked == {"text2img": [names[0]], "img2img": [names[2]], "combined": [names[0], names[2]]}


def test_the_headline_is_the_best_shadow_validated_attack_or_the_fixed_rule():
    from diffmia.attacks import ShadowValidation
    from diffmia.audit.scoring import choose_headline

    def v(auc, tpr):
        return ShadowValidation(auc, tpr, 0.01, 5)

    config = parse_config({})
    validation = {
        ("text2img", "threshold"): v(0.90, 0.30),
        ("img2img", "classifier"): v(0.95, 0.30),
        ("combined", "threshold"): v(0.99, 0.25),
        ("combined", "classifier"): v(0.95, 0.30),
    }
    # the highest TPR (0.30, three times), then the highest AUC among those (0.95, twice), then the first of those
    assert choose_headline(config, validation) == ("img2img", "classifier")
    # a TPR the shadows cannot resolve ranks below any measured one; among unresolved ones the AUC decides
    unresolved = {("text2img", "threshold"): v(0.99, float("nan")), ("img2img", "threshold"): v(0.6, 0.0)}
    assert choose_headline(config, unresolved) == ("img2img", "threshold")
    del unresolved[("img2img", "threshold")]
    unresolved[("img2img", "classifier")] = v(0.9, float("nan"))
    assert choose_headline(config, unresolved) == ("text2img", "threshold")
    fixed = parse_config({"attacks": {"headline": "fixed"}, "generation": {"channels": ["text2img", "img2img"]}})
    assert choose_headline(fixed, validation) == ("combined", "classifier")


class _SeedGrey:
    """A stand-in model: each query's image is one grey level drawn from its seed, or, given the candidates' files,
    the query's own candidate, as a model that reproduces its training images."""

    def __init__(self, name, candidates=None):
        self.name, self.candidates, self.seeds = name, candidates, []

    def generate(self, queries, cache, settings, show_progress):
        self.seeds += [q.seed for q in queries]
        if self.candidates is not None:
            return [Image.open(self.candidates[q.sample_id]).convert("RGB") for q in queries]
        return [Image.new("RGB", (8, 8), (q.seed % 251,) * 3) for q in queries]


def test_calibrated_features_subtract_the_base_models_at_independent_seeds(tmp_path):
    """features.calibrate: beside each feature, the feature minus the base model's for the same candidates and
    prompts at the reference seeds (by hand here); the base model's own control is not zero by design, since its
    audited queries use the run's seeds; the reference queries run once per candidate set."""
    from diffmia.audit.measure import Queries
    from diffmia.encoders import PixelEncoder
    from diffmia.queries import query_seed, reference_seed

    samples = load_image_folder(_folder(tmp_path / "data", [10, 60, 200])).samples
    config = parse_config(
        {
            "features": {"distances": ["l2"], "aggregations": ["mean"], "calibrate": True},
            "generation": {"channels": ["text2img"], "queries_per_image": 2, "seed": 7},
        }
    )
    prompts = SimpleNamespace(get_all=lambda source, samples: [[s.caption] for s in samples])
    target, base = _SeedGrey("target", {s.id: s.image_path for s in samples}), _SeedGrey("base")
    queries = Queries(config, tmp_path / "run", prompts, {"pixels": PixelEncoder(8)}, False, base)
    table = queries.features(target, samples, "given")
    assert table.names == ("text2img/pixels/l2/pooled/mean", "text2img/pixels/l2/pooled/mean-minus-base")
    grey = np.array([10, 60, 200])[:, None] / 255.0  # each candidate is one grey level
    seeds = [[query_seed(reference_seed(7), s.id, "text2img", j) for j in range(2)] for s in samples]
    reference = -np.sqrt(8 * 8 * 3) * np.abs(grey - np.array(seeds) % 251 / 255.0).mean(axis=1)
    np.testing.assert_allclose(table.X[:, 0], 0.0, atol=1e-6)  # the memorising model reproduces every candidate
    np.testing.assert_allclose(table.X[:, 1], -reference, rtol=1e-5)
    assert base.seeds == [s for row in seeds for s in row]  # queried once, at the reference seeds
    control = queries.features(base, samples, "given")
    assert base.seeds[6:] == [query_seed(7, s.id, "text2img", j) for s in samples for j in range(2)]
    assert np.abs(control.X[:, 1]).min() > 0.01 and len(base.seeds) == 12  # no second reference query


def test_distance_from_outsider_shadows_by_hand():
    """features.outsiders: D' = a, b, c, d in two complementary pairs of shadows (0: a b / 1: c d, 2: a c / 3: b d),
    so one outsider reference per row (4 / 2 - 1); a shadow's own rows never take that shadow as reference; the
    target's candidate outside D' (t) is queried under the first shadow, the member a in D' is not queried again.
    One feature, f_j(x) = 10 j + position of x; the calibrated column is left out of the references."""
    from diffmia.audit.measure import with_outsiders
    from diffmia.records import FeatureTable

    ids = ("a", "b", "c", "d")
    members = [("a", "b"), ("c", "d"), ("a", "c"), ("b", "d")]
    used = [
        (
            SimpleNamespace(name=f"shadow-{j}"),
            MembershipSplit(
                tuple(Sample(i, Path(i), None) for i in m), tuple(Sample(i, Path(i), None) for i in ids if i not in m)
            ),
        )
        for j, m in enumerate(members)
    ]
    names = ("img2img/pixels/l2/pooled/mean", "img2img/pixels/l2/pooled/mean-minus-base")

    def table(values, sample_ids=ids):
        return FeatureTable(sample_ids, np.column_stack([values, np.full(len(values), 99.0)]), names, None)

    shadows = [table([10.0 * j + k for k in (1, 2, 3, 4)]) for j in range(4)]
    asked = []

    class Outside:
        def outside(self, model, samples, source):
            asked.append((model.name, [s.id for s in samples], source))
            return table([5.0], ("t",))

    candidates = [Sample("a", Path("a"), None, member=True), Sample("t", Path("t"), None, member=False)]
    tables = {"target": table([100.0, 50.0], ("a", "t"))}
    fitted, scored = with_outsiders(Outside(), used, "given", shadows, tables, candidates)
    assert asked == [("shadow-0", ["t"], "given")]
    # outsiders of D': a of 1 and 3 (11, 31), b of 1 and 2 (12, 22), c of 0 and 3 (3, 33), d of 0 and 2 (4, 24):
    # scatter 200 + 50 + 450 + 200 over 4 degrees of freedom, spread 15
    assert fitted[0].names == (*names, "img2img/pixels/l2/pooled/mean-vs-outsiders")
    # shadow 0's rows: a -> shadow 1 (11), b -> 1 (12), c -> 3 (33, not itself), d -> 2 (24)
    np.testing.assert_allclose(fitted[0].X[:, 2], np.array([1 - 11, 2 - 12, 3 - 33, 4 - 24]) / 15)
    # shadow 1's rows: a -> 3 (31; 1 is itself), b -> 2 (22), c -> 0 (3), d -> 0 (4)
    np.testing.assert_allclose(fitted[1].X[:, 2], np.array([11 - 31, 12 - 22, 13 - 3, 14 - 4]) / 15)
    np.testing.assert_allclose(fitted[1].X[:, :2], shadows[1].X)  # the columns as they were, beside
    # the target: a -> shadow 1 (11), t -> shadow 0 (5)
    np.testing.assert_allclose(scored["target"].X[:, 2], [(100 - 11) / 15, (50 - 5) / 15])


def test_shadows_are_planned_in_complementary_pairs():
    target = MembershipSplit(_samples("m", 30), _samples("n", 30))
    aux = plan_auxiliary(
        "disjoint", target, _samples("a", 50), shadow_members=20, overlap=0.5, n_shadows=4, rng=np.random.default_rng(0)
    )
    first, second, third, fourth = aux.shadow_splits
    assert (second.members, second.nonmembers) == (first.nonmembers, first.members)
    assert (fourth.members, fourth.nonmembers) == (third.nonmembers, third.members)
    assert first != third
    counts = collections.Counter(s.id for split in aux.shadow_splits for s in split.members)
    assert set(counts.values()) == {2} and len(counts) == 40  # every image of D' a member of exactly 2 of 4
    for shadows, given, why in (
        (2, [], "even and at least 4 \\(got 2\\)"),
        (5, [], "got 5"),
        (4, [{"model": "m", "members": "x", "nonmembers": "y"}], "drop audit.given_shadows"),
    ):
        with pytest.raises(ConfigError, match=f"features.outsiders .*{why}"):
            parse_config({"features": {"outsiders": True}, "audit": {"shadows": shadows, "given_shadows": given}})


def test_outsider_references_query_with_the_run_seeds_once(tmp_path):
    """A shadow queried with the target's candidates (features.outsiders) uses the run's seeds, as for its own
    candidates (a candidate of D' is a cache hit), is counted among the images it was asked for, and is asked once."""
    from diffmia.audit.measure import Queries
    from diffmia.encoders import PixelEncoder
    from diffmia.queries import query_seed

    samples = load_image_folder(_folder(tmp_path / "data", [10, 60])).samples
    config = parse_config(
        {
            "features": {"distances": ["l2"], "aggregations": ["mean"], "outsiders": True},
            "audit": {"shadows": 4},
            "generation": {"channels": ["img2img"], "seed": 3},
        }
    )
    prompts = SimpleNamespace(get_all=lambda source, samples: [[s.caption] for s in samples])
    shadow = _SeedGrey("shadow-disjoint-0")
    queries = Queries(config, tmp_path / "run", prompts, {"pixels": PixelEncoder(8)}, show_progress=False)
    table = queries.outside(shadow, samples, "given")
    assert queries.outside(shadow, samples, "given") is table and queries.tables == {}  # once; not saved
    assert shadow.seeds == [query_seed(3, s.id, "img2img", j) for s in samples for j in range(3)]
    assert queries.images_requested == {"shadow-disjoint-0": 6}
    grey = np.array([10, 60])[:, None] / 255.0
    expected = -np.sqrt(8 * 8 * 3) * np.abs(grey - np.array(shadow.seeds).reshape(2, 3) % 251 / 255.0).mean(axis=1)
    np.testing.assert_allclose(table.X[:, 0], expected, rtol=1e-5)


def test_several_strengths_make_one_channel_each_with_its_own_features_and_attacks(tmp_path):
    """generation.strength = [0.2, 0.6]: each candidate queried m times per strength; the features of each strength
    are a channel of their own (img2img@S/...), computed from that strength's images alone (by hand: a stand-in
    model whose image is the grey level of the strength); the attacks see each channel and both together."""
    from diffmia.audit.measure import Queries
    from diffmia.audit.scoring import channel_sets, choose_headline
    from diffmia.encoders import PixelEncoder

    class StrengthGrey:
        name, strengths = "target", []

        def generate(self, queries, cache, settings, show_progress):
            self.strengths += [q.strength for q in queries]
            return [Image.new("RGB", (8, 8), (round(255 * q.strength),) * 3) for q in queries]

    samples = load_image_folder(_folder(tmp_path / "data", [10, 60, 200])).samples
    config = parse_config(
        {
            "features": {"distances": ["l2"], "aggregations": ["mean"]},
            "attacks": {"headline": "fixed"},
            "generation": {"channels": ["img2img"], "queries_per_image": 2, "strength": [0.2, 0.6]},
        }
    )
    prompts = SimpleNamespace(get_all=lambda source, samples: [[s.caption] for s in samples])
    model = StrengthGrey()
    table = Queries(config, tmp_path / "run", prompts, {"pixels": PixelEncoder(8)}, show_progress=False).features(
        model, samples, "given"
    )
    assert table.names == ("img2img@0.2/pixels/l2/pooled/mean", "img2img@0.6/pixels/l2/pooled/mean")
    assert model.strengths == [0.2] * 6 + [0.6] * 6  # one channel (one batch kind) at a time
    grey = np.array([10, 60, 200]) / 255.0
    for k, strength in enumerate((0.2, 0.6)):
        expected = -np.sqrt(8 * 8 * 3) * np.abs(grey - round(255 * strength) / 255.0)
        np.testing.assert_allclose(table.X[:, k], expected, rtol=1e-5)
    assert channel_sets(table.names, config.generation.query_channels()) == {
        "img2img@0.2": (table.names[0],),
        "img2img@0.6": (table.names[1],),
        "combined": table.names,
    }
    assert choose_headline(config, {}) == ("combined", "classifier")


def test_several_shadows_pool_into_one_training_table():
    """Two shadows' features stacked in order, labels kept with their rows, ids told apart by the shadow."""
    from diffmia.audit.measure import pool_tables
    from diffmia.records import FeatureTable

    first = FeatureTable(("a", "b"), np.array([[1.0, 2.0], [3.0, 4.0]]), ("f", "g"), np.array([True, False]))
    second = FeatureTable(
        ("a", "c", "d"), np.array([[5.0, 6.0], [7.0, 8.0], [9.0, 0.0]]), ("f", "g"), np.array([False, True, True])
    )
    pooled = pool_tables([first, second])
    assert pooled.sample_ids == ("0:a", "0:b", "1:a", "1:c", "1:d")
    np.testing.assert_array_equal(pooled.X[:, 0], [1, 3, 5, 7, 9])
    np.testing.assert_array_equal(pooled.y, [True, False, False, True, True])
    assert pooled.names == ("f", "g") and pool_tables([first]) is first


def test_scenario_without_shadows_is_a_config_error():
    with pytest.raises(ConfigError, match=r"scenario\(s\) I, II have no shadow model"):
        parse_config({"audit": {"shadows": 0, "scenarios": ["I", "II"]}})


def test_a_run_directory_of_another_config_is_not_reused(tmp_path):
    config = parse_config(_folders_config(tmp_path, scenarios=["III"]))
    run = tmp_path / "runs" / "bad"
    run.mkdir(parents=True)
    (run / "config.toml").write_text('[audit]\nname = "other"\n')
    with pytest.raises(ConfigError, match="holds a run of a different configuration"):
        run_audit(config)


# --- end to end ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """`diffmia run` on a tiny, deliberately over-fitted audit of the built-in model (about 90 s on 2 cores)."""
    root = tmp_path_factory.mktemp("audit")
    config = root / "tiny.toml"
    config.write_text(TINY_AUDIT.format(runs=root / "runs"))
    assert main(["run", str(config)]) == 0
    return config, root / "runs" / "tiny"


def _result(run: Path, scenario: str, model: str, channel: str, attack: str) -> dict:
    result = json.loads((run / "result.json").read_text())
    (hit,) = [
        r
        for r in result["results"]
        if (r["scenario"], r["model"], r["channel"], r["attack"]) == (scenario, model, channel, attack)
    ]
    return hit["evaluation"]


@pytest.mark.slow
def test_run_writes_the_run_directory_and_finds_the_members(tiny_run):
    _, run = tiny_run
    for name in (
        "config.toml",
        "splits.json",
        "prompts.json",
        "features.parquet",
        "scores.parquet",
        "result.json",
        "report.html",
    ):
        assert (run / name).is_file(), name
    assert load_config(run / "config.toml").audit.name == "tiny"
    splits = json.loads((run / "splits.json").read_text())
    assert len(splits["target"]["members"]) == len(splits["target"]["nonmembers"]) == 20
    overlap = splits["auxiliary"]["overlap"]
    assert overlap["n_target_members"] == 20 and len(overlap["samples"]) == 40
    assert set(overlap["samples"]) & set(splits["target"]["members"])  # scenario I/II: real members in D'
    assert not set(splits["auxiliary"]["disjoint"]["samples"]) & set(
        splits["target"]["members"] + splits["target"]["nonmembers"]
    )
    scores = pq.read_table(run / "scores.parquet").to_pydict()
    result = json.loads((run / "result.json").read_text())
    # 4 scenarios x (target + base) x (3 channel sets x 3 attacks + 4 baselines) + 4 blind controls, 40 samples each
    assert len(result["results"]) == 4 * 2 * (3 * 3 + 4) + 4
    assert len(scores["score"]) == 40 * len(result["results"])
    # the over-fitted target leaks in every scenario, on each channel and on both together: the classifier's AUC
    # clears 0.85 in I-III (measured 0.95-1.00), 3.8 standard deviations above chance at 20 + 20 (null sd
    # sqrt(41 / 4800) = 0.092), and 0.75 in IV, the hardest (no caption, D' disjoint; measured 0.81-0.85), 2.7 sd;
    # every interval lies above 0.5; the blind control (the query images alone) stays within 0.5 +/- 0.2 (2.2 sd)
    for scenario, bound in (("I", 0.85), ("II", 0.85), ("III", 0.85), ("IV", 0.75)):
        for channel in ("text2img", "img2img", "combined"):
            evaluation = _result(run, scenario, "target", channel, "classifier")
            assert evaluation["auc"] > bound and evaluation["auc_interval"]["low"] > 0.5, (scenario, channel)
        assert abs(_result(run, scenario, "blind", "none", "classifier")["auc"] - 0.5) < 0.2, scenario
    evaluation = _result(run, "I", "target", "text2img", "classifier")
    assert evaluation["n_members"] == evaluation["n_nonmembers"] == 20

    # the run warns about exactly the controls that stray: AUC outside 0.5 +/- 0.1 with an interval excluding 0.5
    def stray(row: dict) -> bool:
        auc, interval = row["evaluation"]["auc"], row["evaluation"]["auc_interval"]
        return abs(auc - 0.5) > 0.1 and not interval["low"] <= 0.5 <= interval["high"]

    strays = [
        f"{r['scenario']}/{r['channel']}/{r['attack']} {r['evaluation']['auc']:.3f}"
        for r in result["results"]
        if r["model"] in ("base", "blind") and stray(r)
    ]
    warned = " ".join(w for w in result["warnings"] if w.startswith("attacks on "))
    assert sorted(strays) == sorted(re.findall(r"\b(?:I|II|III|IV)/\S+/\S+ \d\.\d{3}", warned))
    assert evaluation["tpr_at_fpr"][0]["tpr"] is None  # 1% FPR is below 1/20: n/a, with its reason
    assert "below 1/" in evaluation["tpr_at_fpr"][0]["reason"]
    # the shadow-free baselines: the gray-box ones read the over-fitted target's weights and find every member;
    # on the un-fine-tuned base they find nothing (20 + 20 samples: within 0.5 +/- 0.2)
    for attack in ("loss", "secmi", "pia"):
        assert _result(run, "I", "target", "weights", attack)["auc"] > 0.9, attack
        assert abs(_result(run, "I", "base", "weights", attack)["auc"] - 0.5) < 0.2, attack
    assert abs(_result(run, "I", "base", "none", "gan-leaks")["auc"] - 0.5) < 0.2
    features = pq.read_table(run / "features.parquet")
    assert {"model", "prompts", "sample_id", "member"} <= set(features.column_names)
    assert "text2img/pixels/cosine/pooled/mean" in features.column_names
    assert "img2img/pixels/ssim/pooled/max" in features.column_names
    # 2 generations per image and channel, for 40 images per model and prompt source; identical queries (a caption
    # the captioner got exactly right) are generated once
    assert result["queries_per_image"] == 2
    # (+ 40 caption-free generations of the target and of the base for the GAN-Leaks baseline)
    assert result["images_requested"] == {"target": 520, "base": 520, "shadow-overlap-0": 320, "shadow-disjoint-0": 320}
    assert 0.8 * 1680 < len(list((run / "cache").glob("*/*.png"))) <= 1680
    exposed = result["exposed"]["images"]
    assert len(exposed) == 4 and all(row["sample_id"] in splits["target"]["members"] for row in exposed)
    # each headline is the candidate with the best out-of-fold shadow numbers (20 shadow non-members cannot resolve
    # 1% FPR: the AUC decides), recorded beside it; the most exposed members are ranked by the first scenario's
    assert "out-of-fold TPR at 1% FPR on the shadows" in result["headline_rule"]
    for scenario, rows in result["headline_validation"].items():
        assert len(rows) == 9 and {(r["tpr"], r["folds"]) for r in rows} == {(None, 5)}
        best = max(rows, key=lambda r: r["auc"])
        assert result["headline"][scenario] == [best["channel"], best["attack"]]
    assert sorted(result["headline_validation"]) == ["I", "II", "III", "IV"]
    assert [result["exposed"]["channel"], result["exposed"]["attack"]] == result["headline"]["I"]
    assert [row["score"] for row in exposed] == sorted((row["score"] for row in exposed), reverse=True)


@pytest.mark.slow
def test_a_rerun_elsewhere_reuses_everything_and_gives_the_same_numbers(tiny_run, tmp_path, capsys):
    """A rerun resumes, and where a run lives is not what it holds: the run directory copied elsewhere and run
    again trains and generates nothing, gives the same scores, and adds its pass to the record."""
    config, run = tiny_run
    moved = shutil.copytree(run, tmp_path / "elsewhere" / "tiny")  # (copy2: modification times kept)
    cached = sorted(p.name for p in (moved / "cache").glob("*/*.png"))
    models = {p.parent.name: p.stat().st_mtime_ns for p in (moved / "models").glob("*/card.json")}
    assert main(["run", str(config), "--runs-dir", str(tmp_path / "elsewhere")]) == 0
    assert "fine-tuning" not in capsys.readouterr().err  # nothing trained again
    assert sorted(p.name for p in (moved / "cache").glob("*/*.png")) == cached  # nothing generated again
    assert {p.parent.name: p.stat().st_mtime_ns for p in (moved / "models").glob("*/card.json")} == models
    assert pq.read_table(moved / "scores.parquet").to_pydict() == pq.read_table(run / "scores.parquet").to_pydict()
    # the rerun adds its pass to the record and keeps the first pass's timings (the real work's cost)
    first, again = json.loads((moved / "result.json").read_text())["passes"][-2:]
    assert first["seconds"]["fine-tune"] > 5 * max(again["seconds"]["fine-tune"], 0.1)
    assert again["seconds"]["generate and features"] < first["seconds"]["generate and features"]


@pytest.mark.slow
def test_a_given_shadow_gives_the_numbers_of_the_same_shadow_trained_here(tiny_run, tmp_path):
    """Audit the run's own target again, with its trained disjoint shadow handed in as a folder."""
    config, run = tiny_run
    splits = json.loads((run / "splits.json").read_text())
    shadow = splits["auxiliary"]["disjoint"]["shadows"][0]
    by_id = load_image_folder(run / "data" / "digits").by_id()
    folders = {k: write_subset([by_id[i] for i in shadow[k]], tmp_path / k) for k in ("members", "nonmembers")}
    settings = load_config(config).model_dump(mode="json", exclude_none=True)
    settings["audit"].update(
        name="given",
        runs_dir=str(tmp_path / "runs"),
        finetune_target=False,
        shadows=0,
        scenarios=["III"],
        given_shadows=[
            {
                "model": str(run / "models" / "shadow-disjoint-0" / "pipeline"),
                "members": str(folders["members"]),
                "nonmembers": str(folders["nonmembers"]),
                "scenarios": ["III"],
            }
        ],
    )
    settings["target"]["model"] = str(run / "models" / "target" / "pipeline")
    settings["generation"]["cache"] = str(run / "cache")
    result = run_audit(parse_config(settings), show_progress=False)
    assert result.models["given-shadow-0"]["given"] is True
    before = pq.read_table(run / "scores.parquet").to_pylist()
    after = pq.read_table(result.run_dir / "scores.parquet").to_pylist()
    assert len(after) == (2 * (3 * 3 + 4) + 1) * 40
    assert after == [row for row in before if row["scenario"] == "III"]


class Flaky:
    """An ASGI wrapper that fails a seeded share of generation requests as busy servers do: HTTP 500, HTTP 429 with
    ``Retry-After: 1``, or a hang past the client's deadline (then a 500 nobody reads)."""

    KINDS = ("500", "429", "hang")

    def __init__(self, app, share: float, hang: float, seed: int = 0) -> None:
        self.app, self.share, self.hang, self.rng = app, share, hang, random.Random(seed)
        self.served: collections.Counter[str] = collections.Counter()

    async def __call__(self, scope, receive, send) -> None:
        draw = self.rng.random() if scope["type"] == "http" and scope["method"] == "POST" else 1.0
        kind = self.KINDS[int(draw / self.share * len(self.KINDS))] if draw < self.share else "answered"
        self.served[kind] += draw < 1.0
        if kind == "answered":
            await self.app(scope, receive, send)
            return
        if kind == "hang":
            await asyncio.sleep(self.hang)
        headers = [(b"content-type", b"application/json")] + ([(b"retry-after", b"1")] if kind == "429" else [])
        await send({"type": "http.response.start", "status": 429 if kind == "429" else 500, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"error": "busy"}'})


@pytest.mark.slow
def test_an_audit_of_a_server_failing_15_percent_of_requests_equals_the_fault_free_audit(tiny_run, tmp_path):
    """Scenario III (text-to-image) against the run's own target behind an AUTOMATIC1111-compatible server
    (`diffmia serve`'s app): once fault-free, once failing 15% of its requests (500, 429, hangs). Same scores, and
    the local run's."""
    from diffmia.serve import make_app
    from diffmia.targets.diffusers import DiffusersTarget

    config, run = tiny_run
    splits = json.loads((run / "splits.json").read_text())
    shadow = splits["auxiliary"]["disjoint"]["shadows"][0]
    by_id = load_image_folder(run / "data" / "digits").by_id()
    folders = {k: write_subset([by_id[i] for i in shadow[k]], tmp_path / k) for k in ("members", "nonmembers")}
    cache = shutil.copytree(run / "cache", tmp_path / "cache")  # the shadow's generations: only the server works
    settings = load_config(config).model_dump(mode="json", exclude_none=True)
    settings["audit"].update(
        runs_dir=str(tmp_path / "runs"),
        finetune_target=False,
        shadows=0,
        scenarios=["III"],
        baselines=[],
        base_control=False,
        blind_control=False,
        given_shadows=[
            {
                "model": str(run / "models" / "shadow-disjoint-0" / "pipeline"),
                "members": str(folders["members"]),
                "nonmembers": str(folders["nonmembers"]),
                "scenarios": ["III"],
            }
        ],
    )
    settings["generation"].update(cache=str(cache), channels=["text2img"])  # image-to-image travels alike
    served = DiffusersTarget(str(run / "models" / "target" / "pipeline"), batch_size=1)
    scores = {}
    for name, share in (("fault-free", 0.0), ("flaky", 0.15)):
        flaky = Flaky(make_app(served), share, hang=3.0)
        with serving(flaky) as url:  # a new port: a new endpoint to the cache, so every target query is sent
            settings["audit"]["name"] = name
            settings["target"] = {
                "kind": "http",
                "url": url,
                "api": "a1111",
                "width": 32,
                "height": 32,
                "request_timeout": 2.0,
                "retries": 8,
            }
            result = run_audit(parse_config(settings), show_progress=False)
        scores[name] = pq.read_table(result.run_dir / "scores.parquet").to_pylist()
        assert result.images_requested["target"] == 80  # 40 images x 2 queries
    # 80 queries, one answered request each; the seeded draws failed 6 of the 86 requests, every kind of fault twice
    # (the outcomes follow the draw sequence, whatever order the requests arrive in)
    assert flaky.served["answered"] == 80 and sum(flaky.served.values()) >= 86
    assert all(flaky.served[kind] >= 2 for kind in Flaky.KINDS), flaky.served
    assert scores["flaky"] == scores["fault-free"]
    # and the local run's: the server generates one image per request where the local run took batches of 32, so
    # the pixels may differ by float summation order (measured: scores within 0.13%), never by what is asked
    headline = ("threshold", "distribution", "classifier")
    local = [
        row
        for row in pq.read_table(run / "scores.parquet").to_pylist()
        if (row["scenario"], row["model"], row["channel"]) == ("III", "target", "text2img")
        and row["attack"] in headline
    ]
    key = ("channel", "attack", "sample_id", "member")
    assert [[r[k] for k in key] for r in scores["flaky"]] == [[r[k] for k in key] for r in local]
    assert [r["score"] for r in scores["flaky"]] == pytest.approx([r["score"] for r in local], rel=1e-2, abs=1e-3)


@pytest.mark.slow
def test_report_rerenders_from_saved_results(tiny_run):
    _, run = tiny_run
    first = (run / "report.html").read_text()
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").read_text() == first
    assert first.count("<img") >= 3 + 3 * 3 + 4 * 5  # ROC per scenario, histograms, exposed members + generations


# the report from a saved run (verdict, every candidate, escaping, a folder without results, the browser check) is
# tested in tests/report/ on the saved run tests/data/run-v1


@pytest.mark.parametrize(
    "name",
    [
        "sd15-lora.toml",
        "sdxl-lora.toml",
        "flux-lora.toml",
        "http-endpoint.toml",
        "generate.toml",
        "builtin-captioner.toml",
    ],
)
def test_example_configs_are_valid(name):
    config = load_config(Path(__file__).parent.parent / "examples" / name)
    if name == "sd15-lora.toml":
        assert config.finetune.method == "lora" and config.finetune.lora_rank == 4
        assert config.features.encoders == ["facebook/deit-base-distilled-patch16-384"]
    if name == "sdxl-lora.toml":  # a single-file LoRA on the SDXL base, shadows LoRA-tuned from the same base
        assert config.target.lora.endswith(".safetensors") and config.finetune.method == "lora"
        assert config.audit.base_model == config.target.model == "stabilityai/stable-diffusion-xl-base-1.0"
        assert config.finetune.mixed_precision == "bf16" and config.finetune.resolution == 1024
    if name == "flux-lora.toml":  # FLUX.1-dev's sampling (guidance embedding 3.5), the gray-box loss baseline
        assert config.target.lora.endswith(".safetensors") and config.target.dtype == "bfloat16"
        assert (config.generation.steps, config.generation.guidance, config.audit.baselines) == (28, 3.5, ["loss"])
    if name == "http-endpoint.toml":
        assert config.target.kind == "http" and config.target.token_env == "MY_TOKEN"


def test_demo_config_prints_and_loads_back(tmp_path, capsys):
    from diffmia.assets import DEMO_CONFIG

    assert main(["demo", "--print-config"]) == 0
    printed = tmp_path / "demo.toml"
    printed.write_text(capsys.readouterr().out)
    demo = load_config(printed)
    assert demo == load_config(DEMO_CONFIG)
    assert demo.audit.finetune_target and demo.audit.scenarios == ["I", "II", "III", "IV"]
    assert demo.generation.channels == ["text2img", "img2img"] and demo.data.builtin


def test_the_realistic_preset_is_a_lora_audit_of_200_members_that_leaves_a_disjoint_shadow_pool(tmp_path, capsys):
    from diffmia.assets import DEMO_PRESETS
    from diffmia.lab.finetune import load_pipeline

    assert main(["demo", "--preset", "realistic", "--print-config"]) == 0
    config = load_config(DEMO_PRESETS["realistic"])
    printed = tmp_path / "realistic.toml"
    printed.write_text(capsys.readouterr().out)
    assert load_config(printed) == config and config.audit.name == "demo-realistic"
    assert (config.data.builtin_members, config.data.builtin_nonmembers, config.audit.shadow_members) == (200, 200, 100)
    assert config.finetune.method == "lora" and config.finetune.epochs is not None
    assert config.audit.scenarios == ["I", "II", "III", "IV"] and "loss" in config.audit.baselines
    # every adapter module exists on the shipped base: a recipe that names none would fail after the data split
    names = [n for n, _ in load_pipeline("builtin").unet.named_modules()]
    assert all(any(n.endswith(t) for n in names) for t in config.finetune.lora_target_modules)
    assert main(["demo", "--preset", "nonesuch", "--print-config"]) == 2


def test_controls_warn_only_when_clearly_separable():
    from diffmia.metrics import evaluate
    from diffmia.records import ScoreSet
    from diffmia.report.verdict import control_warnings

    labels = np.r_[np.ones(100, bool), np.zeros(100, bool)]
    rng = np.random.default_rng(0)

    def score_set(model: str, shift: float) -> ScoreSet:
        scores = rng.normal(size=200) + shift * labels
        evaluation = evaluate(scores, labels, n_bootstrap=200, seed=0)
        return ScoreSet("I", model, "text2img", "classifier", tuple(map(str, range(200))), scores, labels, evaluation)

    separable, noise, target = score_set("blind", 1.5), score_set("base", 0.0), score_set("target", 3.0)
    assert separable.evaluation.auc > 0.8 and separable.evaluation.auc_interval.low > 0.5
    (warning,) = control_warnings([separable, noise, target])  # the target itself never warns, nor a control near 0.5
    assert warning.startswith("attacks on the query images alone (blind) separate members from non-members")
    assert f"I/text2img/classifier {separable.evaluation.auc:.3f}" in warning
    # a control outside 0.5 +/- 0.1 whose interval still holds 0.5 is chance at this sample size: no warning
    wide = ScoreSet(
        "I",
        "base",
        "text2img",
        "threshold",
        noise.sample_ids,
        noise.scores,
        noise.labels,
        replace(noise.evaluation, auc=0.62, auc_interval=replace(noise.evaluation.auc_interval, low=0.45, high=0.75)),
    )
    assert control_warnings([wide]) == []
    # a base control that strays in scenario II only: the captioner fine-tuned on the overlapping D' is named
    captioned = replace(score_set("base", 1.5), scenario="II")
    (warning,) = control_warnings([captioned, noise])
    assert warning.endswith(
        ". The captioner of scenario II was fine-tuned on a D' that holds part of the target's "
        "members and may caption them better, so its prompts carry membership into any model's "
        "generations: the target's II numbers overstate what the target itself leaks (compare "
        "with the disjoint scenarios, whose captioner never saw them)"
    )
    (both,) = control_warnings([captioned, replace(captioned, scenario="IV")])  # and elsewhere: both causes
    assert "II/text2img/classifier" in both and "IV/text2img/classifier" in both
    assert (
        "may differ in distribution, so the target's numbers overstate what membership alone explains; and the "
        "captioner of scenario II was fine-tuned" in both
    )


# --- fault injection: killed at five points, resumed each time ----------------------------------------------

# (what is running, the stderr line that shows it started, or the file whose appearance does)
KILL_POINTS = (
    ("fine-tuning the target", "fine-tuning target on"),
    ("fine-tuning the captioner", "fine-tuning the captioner"),
    ("captioning the shadow's images", "querying shadow-overlap-0 with 40 images (captioner"),
    ("generating and comparing", "querying base with 40 images (given caption"),
    ("writing the run directory", "features.parquet"),
)


def _run_until(config: Path, run: Path, trigger: str, delay: float, timeout: float = 600) -> bool:
    """`diffmia run CONFIG` in a child process, killed with SIGKILL ``delay`` seconds after ``trigger`` shows (a
    line of its log, or a file appearing in the run directory). True if it was killed, False if it finished."""
    child = subprocess.Popen(
        [sys.executable, "-m", "diffmia", "run", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in child.stderr], daemon=True).start()  # type: ignore[union-attr]
    began, seen = time.monotonic(), None
    while child.poll() is None and time.monotonic() - began < timeout:
        while not lines.empty():
            if trigger in lines.get() and seen is None:
                seen = time.monotonic()
        if seen is None and trigger.endswith(".parquet") and (run / trigger).exists():
            seen = time.monotonic()
        if seen is not None and time.monotonic() - seen >= delay:
            child.send_signal(signal.SIGKILL)
            child.wait()
            return True
        time.sleep(0.005)
    assert child.wait(timeout=max(1.0, timeout - (time.monotonic() - began))) == 0
    return False


@pytest.mark.slow
def test_an_audit_killed_at_five_points_ends_with_the_uninterrupted_numbers(tiny_run, tmp_path):
    _, reference = tiny_run
    config = tmp_path / "tiny.toml"
    # the tiny audit without scenarios III and IV and the shadow-free baselines (they add time, not kill points)
    config.write_text(
        TINY_AUDIT.format(runs=tmp_path / "runs")
        .replace('baselines = ["gan-leaks", "loss", "secmi", "pia"]', "baselines = []")
        .replace('scenarios = ["I", "II", "III", "IV"]', 'scenarios = ["I", "II"]')
    )
    run = tmp_path / "runs" / "tiny"
    delays = np.random.default_rng(0).uniform(0.0, 1.5, size=len(KILL_POINTS))
    delays[-1] = 0.0  # the writing step lasts well under a second
    killed = [
        what
        for (what, trigger), delay in zip(KILL_POINTS, delays, strict=True)
        if _run_until(config, run, trigger, float(delay))
    ]
    assert killed == [what for what, _ in KILL_POINTS]
    assert not (run / "result.json").exists()
    assert _run_until(config, run, "no such line", 0.0) is False  # the last resume finishes
    after, before = (json.loads((r / "result.json").read_text()) for r in (run, reference))

    def kept(row: dict) -> bool:
        return row["scenario"] in ("I", "II") and row["attack"] not in ("gan-leaks", "loss", "secmi", "pia")

    assert after["results"] == [r for r in before["results"] if kept(r)]
    assert len(after["results"]) == 2 * 2 * 3 * 3 + 2
    assert [i["sample_id"] for i in after["exposed"]["images"]] == [i["sample_id"] for i in before["exposed"]["images"]]
    rows = pq.read_table(reference / "scores.parquet").to_pylist()
    assert pq.read_table(run / "scores.parquet").to_pylist() == [r for r in rows if kept(r)]
    assert len(after["passes"]) == 1  # the killed passes wrote no result
