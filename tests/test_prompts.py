"""Where an audit's prompts come from: the given captions, or a captioner fine-tuned on D' (or used as shipped)."""

from __future__ import annotations

import logging
from pathlib import Path

from diffmia.assets import resolve_captioner
from diffmia.audit.models import ModelStore
from diffmia.audit.prompts import captioner
from diffmia.config import AuditConfig, CaptionerTrainingConfig, parse_config
from diffmia.data import AuxiliarySet
from diffmia.records import Sample


def test_a_captioner_not_fine_tuned_is_the_shipped_one_and_trains_nothing(tmp_path, caplog):
    """``finetune_captioner = false``: the captioner as given, recorded as not fine-tuned; no model folder, no log."""
    aux = AuxiliarySet("disjoint", (Sample("a", Path("a.png"), "a seven"),), (), 0)
    caplog.set_level(logging.INFO, logger="diffmia")
    audit = AuditConfig(finetune_captioner=False)
    path, card = captioner(audit, CaptionerTrainingConfig(), ModelStore(tmp_path), "disjoint", aux, show_progress=False)
    assert path == Path(resolve_captioner(audit.captioner)) and (path / "config.json").is_file()
    assert card == {"captioner": audit.captioner, "fine-tuned": False}
    assert caplog.records == [] and list(tmp_path.iterdir()) == []


def test_several_prompts_per_image_take_turns_over_its_queries(tmp_path):
    """Query j of an image takes its prompt j mod k (k prompts), with the seed of query j; one prompt serves all."""
    from diffmia.config import GenerationConfig
    from diffmia.queries import build_queries, query_seed

    samples = [Sample("a", tmp_path / "a.png"), Sample("b", tmp_path / "b.png")]
    settings = GenerationConfig(channels=["text2img", "img2img"], queries_per_image=3)
    queries = build_queries(samples, [["a1", "a2"], "b"], settings)
    assert [(q.sample_id, q.mode, q.prompt) for q in queries] == [
        ("a", "text2img", "a1"),
        ("a", "text2img", "a2"),
        ("a", "text2img", "a1"),
        ("a", "img2img", "a1"),
        ("a", "img2img", "a2"),
        ("a", "img2img", "a1"),
        ("b", "text2img", "b"),
        ("b", "text2img", "b"),
        ("b", "text2img", "b"),
        ("b", "img2img", "b"),
        ("b", "img2img", "b"),
        ("b", "img2img", "b"),
    ]
    assert [q.seed for q in queries[:3]] == [query_seed(0, "a", "text2img", j) for j in range(3)]
    assert build_queries(samples, [["a1"], ["b"]], settings) == build_queries(samples, ["a1", "b"], settings)


def test_several_strengths_query_each_image_at_each_with_the_same_seeds(tmp_path):
    """generation.strength as a list: m image-to-image queries per strength, query j with the same seed (and prompt)
    at every strength; text-to-image untouched; the channels named per strength; one strength is the plain channel."""
    import pytest

    from diffmia.config import GenerationConfig
    from diffmia.errors import ConfigError
    from diffmia.queries import build_queries, query_seed

    samples = [Sample("a", tmp_path / "a.png")]
    settings = GenerationConfig(channels=["text2img", "img2img"], queries_per_image=2, strength=[0.3, 0.7])
    queries = build_queries(samples, [["p1", "p2"]], settings)
    assert [(q.mode, q.strength, q.prompt) for q in queries] == [
        ("text2img", None, "p1"),
        ("text2img", None, "p2"),
        ("img2img", 0.3, "p1"),
        ("img2img", 0.3, "p2"),
        ("img2img", 0.7, "p1"),
        ("img2img", 0.7, "p2"),
    ]
    assert [q.seed for q in queries[2:]] == [query_seed(0, "a", "img2img", j) for j in (0, 1, 0, 1)]
    assert settings.query_channels() == ["text2img", "img2img@0.3", "img2img@0.7"]
    narrowed = settings.for_channel("img2img@0.7")
    assert (narrowed.channels, narrowed.strength) == (["img2img"], 0.7)
    assert build_queries(samples, [["p1", "p2"]], narrowed) == queries[4:]
    one = GenerationConfig(channels=["img2img", "text2img"], strength=[0.4])
    assert one.query_channels() == ["img2img", "text2img"] and one.strengths == (0.4,)
    assert GenerationConfig(channels=["text2img", "img2img"], strength=0.4).query_channels() == ["text2img", "img2img"]
    for bad, message in [
        ([], "non-empty list"),
        ([0.3, 0.3], "each strength once"),
        ([0.3, 1.5], r"in \(0, 1\]"),
        ([0.3, 0.3000001], "each strength once"),  # one channel name, img2img@0.3, for both
        (True, "should be a strength"),
        ("0.5", "should be a strength"),
    ]:
        with pytest.raises(ConfigError, match=rf"1 problem: generation\.strength: .*{message}"):
            parse_config({"generation": {"strength": bad}})


def test_an_audit_needs_a_query_per_caption():
    import pytest

    from diffmia.config import parse_config
    from diffmia.errors import ConfigError

    with pytest.raises(
        ConfigError,
        match=r"audit\.captions_per_image = 4 needs at least as many queries per image "
        r"\(generation\.queries_per_image = 3\): one query per caption",
    ):
        parse_config({"audit": {"captions_per_image": 4}})
    assert parse_config({"audit": {"captions_per_image": 3}}).audit.captions_per_image == 3


def test_several_captions_are_saved_as_lists_and_read_back(tmp_path):
    """prompts.json keeps one string per image, or the list when a captioner writes several; ``get`` gives the
    best, ``get_all`` every one; a second run reads them instead of captioning again."""
    import json

    from diffmia.audit.prompts import Prompts

    class Beams:
        calls = 0

        def caption_all(self, samples):
            Beams.calls += 1
            return [[f"{s.id} best", f"{s.id} second"] if s.id != "c" else [f"{s.id} only"] for s in samples]

    samples = [Sample(i, tmp_path / f"{i}.png") for i in "abc"]

    def prompts():
        made = Prompts(tmp_path)
        made.captioners["captioner-disjoint"] = Beams()
        return made

    first = prompts()
    assert first.get_all("captioner-disjoint", samples) == [["a best", "a second"], ["b best", "b second"], ["c only"]]
    assert first.get("captioner-disjoint", samples[:2]) == ["a best", "b best"]
    saved = json.loads((tmp_path / "prompts.json").read_text())
    assert saved == {"captioner-disjoint": {"a": ["a best", "a second"], "b": ["b best", "b second"], "c": "c only"}}
    assert prompts().get_all("captioner-disjoint", samples)[1] == ["b best", "b second"] and Beams.calls == 1
