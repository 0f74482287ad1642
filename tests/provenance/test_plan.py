"""``diffmia provenance``'s checks before any query: bad input is one Error line, exit 2, and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from diffmia.cli import main
from diffmia.config import ProvenanceFile
from diffmia.errors import ConfigError
from diffmia.provenance.plan import base_model_of, prompt_sources


def _folder(root: Path, values: list[int], captions: bool = True, size: int = 8, prefix: str = "") -> Path:
    """Flat grey images, one per value (equal values, equal pixels)."""
    (root / "images").mkdir(parents=True)
    lines = []
    for i, value in enumerate(values):
        Image.new("L", (size, size), value).save(root / f"images/{i}.png")
        record = {"file_name": f"images/{i}.png", "id": f"{prefix or root.name}-{i}"}
        record |= {"caption": f"a grey square {value}"} if captions else {}
        lines.append(json.dumps(record))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _refused(capsys, tmp_path, *args: str) -> str:
    out = tmp_path / "out"
    code = main(["provenance", *args, "--model", "builtin", "--base", "builtin", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("Error: "), err
    assert not out.exists()  # refused before anything was written or queried
    return err


def test_every_problem_of_the_two_sets_is_named_at_once(tmp_path, capsys):
    suspects = _folder(tmp_path / "s", [*range(3), 40])
    references = _folder(tmp_path / "r", [40, *range(100, 111)], prefix="s")
    err = _refused(capsys, tmp_path, str(suspects), str(references))
    assert (
        "4 suspects: the test needs at least 5 of each (one in each of its 5 folds; provenance.folds sets them)" in err
    )
    assert "ids in both folders (give every image a unique id): s-0, s-1, s-2, s-3" in err
    assert "suspects and references share images (same pixels): s-3 = s-0" in err


def test_images_of_several_sizes_are_refused(tmp_path, capsys):
    suspects = _folder(tmp_path / "s", list(range(10)))
    references = _folder(tmp_path / "r", list(range(100, 112)), size=16)
    err = _refused(capsys, tmp_path, str(suspects), str(references))
    assert "images of several sizes (suspects: 8x8 (10); references: 16x16 (12)): give images of one size" in err


def test_given_captions_must_be_there_and_alpha_must_be_reachable(tmp_path, capsys):
    suspects, references = _folder(tmp_path / "s", list(range(10))), _folder(tmp_path / "r", list(range(50, 60)), False)
    config = tmp_path / "p.toml"
    config.write_text('[provenance]\nprompts = "given"\n')
    err = _refused(capsys, tmp_path, str(suspects), str(references), "--config", str(config))
    assert "prompts = 'given' queries with the given captions, and 10 images have none (r-0, r-1" in err
    config.write_text("[provenance]\npermutations = 50\nalpha = 0.01\n")
    err = _refused(capsys, tmp_path, str(suspects), str(references), "--config", str(config))
    assert "50 permutations give p-values of at least 0.0196, above alpha = 0.01" in err


def test_a_target_that_cannot_be_queried_is_refused_before_any_query(tmp_path, capsys):
    suspects, references = _folder(tmp_path / "s", list(range(10))), _folder(tmp_path / "r", list(range(50, 60)))
    config = tmp_path / "p.toml"
    config.write_text(
        '[target]\nkind = "http"\nurl = "http://127.0.0.1:9"\nretries = 0\n[provenance]\nbase_model = "builtin"\n'
    )
    out = tmp_path / "out"
    assert main(["provenance", str(suspects), str(references), "--config", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "127.0.0.1:9" in err and not out.exists()


def test_the_prompts_and_the_base_model_follow_the_inputs():
    file = ProvenanceFile.model_validate({"target": {"model": "m", "lora": "l.safetensors"}})
    assert base_model_of(file) == "m"  # the target's own model under its LoRA
    with pytest.raises(ConfigError, match="cannot be read from it: give the public model"):
        base_model_of(ProvenanceFile.model_validate({"target": {"model": "m"}}))
    given = ProvenanceFile.model_validate({"provenance": {"base_model": "b"}})
    assert base_model_of(given) == "b"
    from diffmia.records import Sample

    captioned = (Sample("a", Path("a.png"), "x"), Sample("b", Path("b.png"), "y"))
    assert prompt_sources(given.provenance, captioned) == ("given",)
    bare = (Sample("a", Path("a.png"), "x"), Sample("b", Path("b.png"), None))
    assert prompt_sources(given.provenance, bare) == ("captioner",)
    both = ProvenanceFile.model_validate({"provenance": {"prompts": "both"}}).provenance
    with pytest.raises(Exception, match="1 images have none"):
        prompt_sources(both, bare)
