"""One registry per extension axis: a toy attack, a toy target kind and a toy similarity, each one definition in
tests/toys.py and one registry line here, run in an audit next to nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffmia.attacks import ATTACKS
from diffmia.audit import run_audit
from diffmia.config import parse_config
from diffmia.configdoc import config_reference
from diffmia.distances import SIMILARITIES
from diffmia.errors import ConfigError
from diffmia.registry import Registry
from diffmia.targets import TARGETS
from toys import MeanAttack, MemoriserConfig, farthest_coordinate


def _noise_folder(root: Path, n: int, seed: int) -> Path:
    """``n`` captioned 16x16 images of seeded noise."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    lines = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / f"images/{i}.png")
        lines.append(json.dumps({"file_name": f"images/{i}.png", "id": f"{root.name}-{i}", "caption": "noise"}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_a_registry_names_its_entries_and_refuses_others():
    registry = Registry("colour", {"red": 1, "green": 2})
    assert registry.lookup("green") == 2 and registry.check("red") == "red"
    with pytest.raises(ConfigError, match=r"^unknown colour 'blue'; valid: red, green$"):
        registry.lookup("blue")
    with pytest.raises(ValueError, match=r"^input should be 'red' or 'green'$"):
        registry.check("blue")


@pytest.mark.slow
def test_a_toy_attack_target_and_similarity_plug_in_with_one_registry_line_each(tmp_path, monkeypatch):
    monkeypatch.setitem(ATTACKS, "mean", MeanAttack)
    monkeypatch.setitem(TARGETS, "memoriser", MemoriserConfig)
    monkeypatch.setitem(SIMILARITIES, "farthest", farthest_coordinate)
    members, nonmembers = _noise_folder(tmp_path / "m", 10, 1), _noise_folder(tmp_path / "n", 10, 2)
    config = parse_config(
        {
            "target": {"kind": "memoriser", "members": str(members)},
            "data": {
                "members": str(members),
                "nonmembers": str(nonmembers),
                "auxiliary": str(_noise_folder(tmp_path / "a", 20, 3)),
            },
            "audit": {
                "runs_dir": str(tmp_path / "runs"),
                "scenarios": ["III"],
                "base_control": False,
                "blind_control": False,
                "exposed": 0,
            },
            "attacks": {"use": ["mean", "threshold"]},
            "features": {"distances": ["farthest"], "aggregations": ["mean"]},
            "generation": {"channels": ["img2img"], "queries_per_image": 1, "steps": 2},
            "finetune": {"max_steps": 2, "batch_size": 10, "checkpoint_every": 0},
            "evaluation": {"n_bootstrap": 20},
        }
    )
    result = run_audit(config, show_progress=False)
    mean = result.find("III", "target", "img2img", "mean")
    assert mean is not None and mean.evaluation.auc == 1.0  # a member comes back as it was: farthest 0; else < 0
    assert mean.scores[mean.labels].max() == 0.0 and mean.scores[~mean.labels].max() < -0.05
    assert result.models["target"]["kind"] == "memoriser" and result.models["target"]["members"] == str(members)
    saved = (tmp_path / "runs" / "audit" / "config.toml").read_text()
    assert 'kind = "memoriser"' in saved and 'distances = [\n    "farthest",\n]' in saved
    assert '`"memoriser"`' in config_reference() and '`"farthest"`' in config_reference()


def test_an_unregistered_name_is_a_config_error_listing_the_registered_ones():
    with pytest.raises(ConfigError) as error:
        parse_config({"attacks": {"use": ["mean"]}, "target": {"kind": "memoriser"}, "features": {"distances": ["x"]}})
    message = str(error.value)
    assert "attacks.use.0: input should be 'threshold', 'distribution' or 'classifier' (got 'mean')" in message
    assert "target.kind: input should be 'diffusers' or 'http' (got 'memoriser')" in message
    assert "features.distances.0: input should be 'cosine', 'l1', 'l2', 'hamming' or 'ssim' (got 'x')" in message
