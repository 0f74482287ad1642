"""The audit's mechanisms, unchanged, on a second image set: captioned coloured shapes (``tests/shapes.py``), not
digits, with a base that ``diffmia lab pretrain`` trained on them (``tests/data/shapes-base``) and a captioner that
``diffmia finetune-captioner --model tiny`` trained from scratch on the same public images
(``tests/data/shapes-captioner``), each card holding its command. No setting below is the digits'."""

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
CAPTIONER = Path(__file__).parent / "data" / "shapes-captioner"
# the ids and captions of write_shapes(root, 2000, seed=1), the set the shipped base and captioner were trained on
PUBLIC_SHA256 = "f0cf8195a473433415b7a5be7369475633007a239fa91a30dc5f754f3c55a586"

AUDIT = """
[audit]
name = "shapes"
runs_dir = "{root}/runs"
finetune_target = true
base_model = "{base}"
scenarios = ["III", "IV"]
captioner = "{captioner}"
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
def test_the_shipped_shapes_base_and_captioner_were_trained_on_the_images_this_generator_writes(tmp_path):
    public = write_shapes(tmp_path / "public", 2000, seed=1)
    card = json.loads((BASE / "card.json").read_text())
    assert card["data"]["n_images"] == 2000 and card["data"]["split"] is None
    assert card["data"]["ids_sha256"] == _ids_digest(load_image_folder(public).samples)
    captioner = json.loads((CAPTIONER / "card.json").read_text())
    assert captioner["data"]["n_images"] == 2000 and captioner["recipe"]["max_steps"] == 3000
    # a changed generator must come with a base and a captioner trained again (their cards hold the commands)
    assert _captions_digest(public) == PUBLIC_SHA256


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    """`diffmia run` on a deliberately over-fitted audit of the shapes base (300 passes over 20 members; at 100 the
    target's generations do not yet reproduce its members): 20 + 20 candidates, a D' of 40 other images, scenarios
    III and IV (one shadow, one captioner: the given-caption and the captioned paths, at half the cost of all four;
    about 155 s on 2 cores)."""
    root = tmp_path_factory.mktemp("shapes")
    for name, n, seed in (("members", 20, 2), ("nonmembers", 20, 3), ("auxiliary", 40, 4)):
        write_shapes(root / name, n, seed)
    config = root / "shapes.toml"
    config.write_text(AUDIT.format(root=root, base=BASE / "pipeline", captioner=CAPTIONER / "captioner"))
    assert main(["run", str(config)]) == 0
    return root, root / "runs" / "shapes"


def _evaluation(result: dict, scenario: str, model: str, channel: str, attack: str) -> dict:
    (hit,) = [
        r
        for r in result["results"]
        if (r["scenario"], r["model"], r["channel"], r["attack"]) == (scenario, model, channel, attack)
    ]
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
def test_without_captions_the_captioner_of_the_shapes_names_them_and_image_to_image_finds_the_members(shapes_run):
    root, run = shapes_run
    # IV's captioner (trained on the public shapes, fine-tuned on D' alone) on the 40 candidates: it names the
    # background and colour of every one, the size of 38 and the shape of 28 (chance: 20, 10, 20, 20), but the place
    # of only 3 (chance: 4.4), so its prompts leave the layout to the model
    prompts = json.loads((run / "prompts.json").read_text())["captioner-disjoint"]
    truth = {}
    for name in ("members", "nonmembers"):
        truth |= {s.id: s.caption.split() for s in load_image_folder(root / name).samples}
    said = {i: prompts[i].split() for i in truth}
    assert len(said) == 40 and all(len(words) >= 4 for words in said.values())
    right = {k: sum(said[i][k] == truth[i][k] for i in truth) for k in (-1, 1, 2, 3)}  # background, size, colour, shape
    assert right[-1] >= 36 and right[2] >= 36 and right[1] >= 32 and right[3] >= 24, right
    # image-to-image, which starts from the candidate, still finds the members: AUC above 0.75 (measured 0.79-0.92,
    # text-to-image 0.65-0.73), the same attacks on the base within 0.5 +/- 0.2 (measured 0.57-0.67)
    result = json.loads((run / "result.json").read_text())
    for channel in ("img2img", "combined"):
        for attack in ("threshold", "distribution", "classifier"):
            assert _evaluation(result, "IV", "target", channel, attack)["auc"] > 0.75, (channel, attack)
            assert abs(_evaluation(result, "IV", "base", channel, attack)["auc"] - 0.5) < 0.2, (channel, attack)
