"""`diffmia generate CONFIG`: the generation stage alone, into a resumable cache, with the target's scheduler and
LoRA weights from the config."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from diffmia.cache import GenerationCache
from diffmia.cli import main
from diffmia.config import FinetuneConfig, GenerationConfig
from diffmia.lab.finetune import finetune
from diffmia.queries import build_queries, query_seed
from diffmia.records import Sample


def _folder(root, n=3):
    (root / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / f"img/{i}.png")
        records.append({"file_name": f"img/{i}.png", "caption": f"a bold soft {'one' if i % 2 else 'seven'}"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def test_query_seeds_depend_on_the_sample_not_its_position(tmp_path):
    a, b = Sample("a", tmp_path / "a.png", "x"), Sample("b", tmp_path / "b.png", "y")
    settings = GenerationConfig(queries_per_image=2, channels=["text2img", "img2img"])
    forward = build_queries([a, b], ["x", "y"], settings)
    backward = build_queries([b, a], ["y", "x"], settings)
    assert len(forward) == 8
    assert {(q.sample_id, q.seed, q.mode) for q in forward} == {(q.sample_id, q.seed, q.mode) for q in backward}
    assert forward[0].seed == query_seed(0, "a", "text2img", 0) != forward[1].seed
    assert forward[2].init_image == a.image_path and forward[2].strength == 0.5


def test_generate_command_fills_the_cache_and_reruns_from_it(tiny_model, tmp_path, capsys):
    data = _folder(tmp_path / "data")
    cache = tmp_path / "cache"
    config = tmp_path / "run.toml"
    config.write_text(
        f'[target]\nmodel = "{tiny_model}"\ndevice = "cpu"\n'
        f'[generation]\ndata = "{data}"\ncache = "{cache}"\nchannels = ["text2img", "img2img"]\n'
        "queries_per_image = 2\nsteps = 2\n"
    )
    assert main(["generate", str(config)]) == 0
    assert "12 queries for 3 images" in capsys.readouterr().out
    assert GenerationCache(cache).verify() == (12, [])
    before = sorted(p.stat().st_mtime_ns for p in cache.rglob("*.png"))
    assert main(["generate", str(config)]) == 0
    assert sorted(p.stat().st_mtime_ns for p in cache.rglob("*.png")) == before


def test_generate_command_bad_settings(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text('[generation]\nstrength = 1.5\n[target]\nkind = "http"\n')
    assert main(["generate", str(config)]) == 2
    err = capsys.readouterr().err
    assert "generation.strength: should be a strength in (0, 1] or a non-empty list" in err and "(got 1.5)" in err
    assert "target: an http target needs a url" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ('scheduler = "fast"', "unknown scheduler 'fast'"),
        ('lora = "/nonexistent/lora"', "LoRA weights /nonexistent/lora do not exist"),
        ('model = "{empty}"', "is not a diffusers pipeline folder"),
        ('kind = "http"\nurl = "http://127.0.0.1:9"\nretries = 0', "failed after 1 attempt (last: ConnectError"),
    ],
)
def test_bad_targets_are_one_error_line_and_leave_no_cache(tmp_path, capsys, target, message):
    data = _folder(tmp_path / "data", n=1)
    (tmp_path / "empty").mkdir()
    config = tmp_path / "run.toml"
    config.write_text(
        "[target]\n" + target.format(empty=tmp_path / "empty") + "\n"
        f'[generation]\ndata = "{data}"\ncache = "{tmp_path / "cache"}"\nsteps = 2\n'
    )
    assert main(["generate", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.*"))


def test_the_configured_scheduler_and_lora_change_the_generated_images(tiny_model, tmp_path, capsys):
    """target.scheduler and target.lora reach the pipeline: the same seeded query gives other pixels, cached
    under another target fingerprint."""
    data = _folder(tmp_path / "data", n=1)
    finetune_data = _folder(tmp_path / "finetune-data", n=2)
    recipe = FinetuneConfig(method="lora", max_steps=2, batch_size=2, learning_rate=0.1, checkpoint_every=0)
    lora = finetune(tiny_model, finetune_data, tmp_path / "finetuned", recipe, show_progress=False) / "lora"
    images, targets = {}, {}
    for name, option in [("base", ""), ("scheduler", 'scheduler = "dpm-solver++"\n'), ("lora", f'lora = "{lora}"\n')]:
        cache = tmp_path / f"cache-{name}"
        config = tmp_path / f"{name}.toml"
        config.write_text(
            f'[target]\nmodel = "{tiny_model}"\ndevice = "cpu"\n{option}'
            f'[generation]\ndata = "{data}"\ncache = "{cache}"\nchannels = ["text2img"]\nqueries_per_image = 1\n'
            "steps = 2\n"
        )
        assert main(["generate", str(config)]) == 0
        (png,) = cache.rglob("*.png")
        images[name] = np.asarray(Image.open(png).convert("RGB")).astype(int)
        targets[name] = json.loads(png.with_suffix(".json").read_text())["target"]
    capsys.readouterr()
    assert "scheduler=dpm-solver++" in targets["scheduler"] and "lora=none" not in targets["lora"]
    assert len(set(targets.values())) == 3
    assert np.abs(images["scheduler"] - images["base"]).max() > 0
    assert np.abs(images["lora"] - images["base"]).max() > 20
