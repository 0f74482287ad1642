"""The audit's mechanisms, unchanged, on a second image set: captioned coloured shapes (``tests/shapes.py``), not
digits, with a base that ``diffmia lab pretrain`` trained on them (``tests/data/shapes-base``; its card holds the
command) and a captioner trained from scratch on each D'. No setting below is the digits'."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from diffmia.cli import main
from diffmia.data import load_image_folder
from diffmia.lab.pretrain import _ids_digest
from shapes import write_shapes

BASE = Path(__file__).parent / "data" / "shapes-base"
# the ids and captions of write_shapes(root, 2000, seed=1), the set the shipped base was pretrained on
PUBLIC_SHA256 = "f0cf8195a473433415b7a5be7369475633007a239fa91a30dc5f754f3c55a586"

AUDIT = """
[audit]
name = "shapes"
runs_dir = "{root}/runs"
finetune_target = true
base_model = "{base}"
scenarios = ["III", "IV"]
captioner = "tiny"
exposed = 0
baselines = ["loss"]

[data]
members = "{root}/members"
nonmembers = "{root}/nonmembers"
auxiliary = "{root}/auxiliary"

[finetune]
max_steps = 300
batch_size = 20
learning_rate = 1e-3
checkpoint_every = 0

[captioner_training]
learning_rate = 1e-3
max_steps = 150
lr_warmup_steps = 10
checkpoint_every = 0

[generation]
channels = ["text2img", "img2img"]
queries_per_image = 2
steps = 5
guidance = 3.0

[evaluation]
n_bootstrap = 200
"""


def _captions_digest(root: Path) -> str:
    """sha256 over each image's id and caption, in id order (not the pixels: a Pillow release may draw a disc's
    edge differently, which does not make the base another set's)."""
    samples = sorted(load_image_folder(root, require_captions=True).samples, key=lambda s: s.id)
    return hashlib.sha256("".join(f"{s.id}\t{s.caption}\n" for s in samples).encode()).hexdigest()


@pytest.mark.slow
def test_the_shipped_shapes_base_was_pretrained_on_the_images_this_generator_writes(tmp_path):
    public = write_shapes(tmp_path / "public", 2000, seed=1)
    card = json.loads((BASE / "card.json").read_text())
    assert card["data"]["n_images"] == 2000 and card["data"]["split"] is None
    assert card["data"]["ids_sha256"] == _ids_digest(load_image_folder(public).samples)
    # a changed generator must come with a base pretrained again (the card's command)
    assert _captions_digest(public) == PUBLIC_SHA256


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    """`diffmia run` on a deliberately over-fitted audit of the shapes base (300 passes over 20 members; at 100 the
    target's generations do not yet reproduce its members): 20 + 20 candidates, a D' of 40 other images, scenarios
    III and IV (one shadow, one captioner: the given-caption and the captioned paths, at half the cost of all four;
    about 150 s on 2 cores)."""
    root = tmp_path_factory.mktemp("shapes")
    for name, n, seed in (("members", 20, 2), ("nonmembers", 20, 3), ("auxiliary", 40, 4)):
        write_shapes(root / name, n, seed)
    config = root / "shapes.toml"
    config.write_text(AUDIT.format(root=root, base=BASE / "pipeline"))
    assert main(["run", str(config)]) == 0
    return root, root / "runs" / "shapes"


def _evaluation(result: dict, scenario: str, model: str, channel: str, attack: str) -> dict:
    (hit,) = [r for r in result["results"] if (r["scenario"], r["model"], r["channel"], r["attack"]) ==
              (scenario, model, channel, attack)]  # fmt: skip
    return hit["evaluation"]


@pytest.mark.slow
def test_an_audit_on_the_shapes_finds_the_members_the_target_reproduces(shapes_run):
    _, run = shapes_run
    result = json.loads((run / "result.json").read_text())
    # the target memorised (gray-box loss, measured 1.000) and the base did not
    assert _evaluation(result, "III", "target", "weights", "loss")["auc"] > 0.9
    assert abs(_evaluation(result, "III", "base", "weights", "loss")["auc"] - 0.5) < 0.2
    # with the captions given, every black-box attack on every channel finds the members: AUC above 0.75 (measured
    # 0.80-0.96), 2.7 standard deviations above chance at 20 + 20 (null sd 0.092); the same attacks on the
    # un-fine-tuned base stay within 0.5 +/- 0.2 (measured 0.43-0.60), so the shapes that members and non-members
    # happen to have do not explain it; the blind control (query images alone) too (measured 0.34)
    for channel in ("text2img", "img2img", "combined"):
        for attack in ("threshold", "distribution", "classifier"):
            assert _evaluation(result, "III", "target", channel, attack)["auc"] > 0.75, (channel, attack)
            assert abs(_evaluation(result, "III", "base", channel, attack)["auc"] - 0.5) < 0.2, (channel, attack)
    headline = _evaluation(result, "III", "target", *result["headline"]["III"])
    assert headline["auc_interval"]["low"] > 0.5
    assert abs(_evaluation(result, "III", "blind", "none", "classifier")["auc"] - 0.5) < 0.2


@pytest.mark.slow
def test_a_captioner_trained_from_scratch_on_the_shapes_learns_their_words(shapes_run):
    # scenario IV's captioner starts from nothing and sees D' alone (40 images, 150 steps). On the 40 candidates it
    # names the background of every one and the colour of 35 (chance: 20 and 10), but not the shape, size or place
    # (measured 18, 21, 3 of 40: chance): so IV's prompts do not make the target reproduce its members, and IV finds
    # no more than its base control does here (measured 0.62-0.74 against 0.53-0.67), which this test does not hide
    root, run = shapes_run
    prompts = json.loads((run / "prompts.json").read_text())["captioner-disjoint"]
    truth = {}
    for name in ("members", "nonmembers"):
        truth |= {s.id: s.caption for s in load_image_folder(root / name).samples}
    words = [(prompts[i].split(), caption.split()) for i, caption in truth.items()]
    assert len(words) == 40
    assert sum(p[-1] == t[-1] for p, t in words) >= 36  # the background, the caption's last word
    assert sum(p[2] == t[2] for p, t in words if len(p) > 2) >= 28  # the colour, its third
    result = json.loads((run / "result.json").read_text())
    assert result["captioners"]["captioner-disjoint"]["base_model"] == "tiny"
