"""Captioner fine-tuning (``diffmia finetune-captioner``): a BLIP captioner trained on the attacker's auxiliary
images, so that captions of query images read like the captions the target was fine-tuned on.

``model="tiny"`` builds a small BLIP from a config, with a word vocabulary learned from the captions, and trains
it from scratch; any BLIP folder or hub id is fine-tuned instead (full or LoRA). ``model="builtin"`` is the
shipped tiny BLIP, trained from scratch by this function on the 1,197 *public* digits (``split="public"``):
the built-in counterpart of a BLIP pretrained on public data, which the attacker then fine-tunes on D'. The
result is a folder that :class:`~diffmia.captioners.BlipCaptioner` loads.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffmia.assets import resolve_captioner
from diffmia.captioners import load_captioner
from diffmia.config import CaptionerTrainingConfig
from diffmia.data import load_image_folder
from diffmia.files import atomic_path
from diffmia.images import load_rgb
from diffmia.lab.pretrain import select_split
from diffmia.lab.seeding import step_rng
from diffmia.lab.training import epoch_batches, refuse_finished, train, training_folder
from diffmia.records import Sample

TINY = "tiny"
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")


def caption_words(captions: Sequence[str]) -> list[str]:
    """The words of ``captions`` as a BERT basic tokenizer splits them (lower case, punctuation apart)."""
    return sorted({w for c in captions for w in re.findall(r"\w+|[^\w\s]", c.lower())})


def build_tiny_blip(
    captions: Sequence[str], image_size: int = 32, seed: int = 0, dropout: float = 0.1
) -> tuple[Any, Any]:
    """A small randomly initialised BLIP captioner and its processor, with a word vocabulary from ``captions``."""
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessorPil,
        BlipProcessor,
        BlipTextConfig,
        BlipVisionConfig,
    )

    vocab = {token: i for i, token in enumerate([*SPECIALS, *caption_words(captions)])}
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=32, bos_token="[DEC]")
    image_processor = BlipImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    text = BlipTextConfig(
        vocab_size=len(vocab),
        hidden_size=96,
        intermediate_size=384,
        num_hidden_layers=2,
        num_attention_heads=4,
        encoder_hidden_size=96,
        max_position_embeddings=32,
        bos_token_id=vocab["[DEC]"],
        eos_token_id=vocab["[SEP]"],
        sep_token_id=vocab["[SEP]"],
        pad_token_id=vocab["[PAD]"],
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    vision = BlipVisionConfig(
        hidden_size=96,
        intermediate_size=384,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=8,
        attention_dropout=dropout,
    )
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text.to_dict(), vision_config=vision.to_dict()))
    return model, processor


def finetune_captioner(
    model: str,
    data_dir: str | Path,
    out_dir: str | Path,
    recipe: CaptionerTrainingConfig | None = None,
    *,
    split: str | None = None,
    resume: bool = True,
    show_progress: bool = True,
) -> Path:
    """Train a captioner on the captioned images of ``data_dir`` (only those of metadata ``split``, if given);
    return the folder BlipCaptioner loads. A rerun with the same arguments resumes from ``out_dir/checkpoints``;
    a finished ``out_dir``, other settings than its checkpoints' or a folder another process trains in are refused."""
    recipe = recipe or CaptionerTrainingConfig()
    out = Path(out_dir)
    refuse_finished(out, "captioner")  # before loading anything; checked again under the folder's lock
    folder = load_image_folder(data_dir, require_captions=True)
    samples = select_split(folder.samples, folder.extra, split)
    captions = [s.caption or "" for s in samples]
    network, processor = _network(model, captions, recipe)
    began = time.perf_counter()
    batches = _Batches.of(processor, network, samples, captions)
    stamp = {"recipe": recipe.model_dump(mode="json"), "model": model, "data": str(Path(data_dir).resolve())}
    with training_folder(out, "captioner", {**stamp, "split": split}, resume):  # one run at a time in a folder
        log = train(
            modules=[network],
            loss_fn=batches.loss(recipe),
            max_steps=recipe.max_steps,
            learning_rate=recipe.learning_rate,
            seed=recipe.seed,
            checkpoint_dir=out / "checkpoints",
            checkpoint_every=recipe.checkpoint_every,
            lr_scheduler=recipe.lr_scheduler,
            lr_warmup_steps=recipe.lr_warmup_steps,
            resume=resume,
            description="fine-tune captioner",
            show_progress=show_progress,
        )
        if recipe.method == "lora":
            network = network.merge_and_unload()
        network.eval()
        target = out / "captioner"
        network.save_pretrained(target)
        processor.save_pretrained(target)
        card = {
            "kind": "diffmia captioner",
            "base_model": model,
            "recipe": recipe.model_dump(mode="json"),
            "data": {"folder": str(data_dir), "split": split, "n_images": len(samples)},
            "final_loss": log.final_loss(),
            "resumed_from": log.resumed_from,
            "wall_seconds": round(time.perf_counter() - began, 1),
        }
        with atomic_path(out / "card.json") as tmp:
            tmp.write_text(json.dumps(card, indent=2) + "\n")
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return target


def _network(model: str, captions: Sequence[str], recipe: CaptionerTrainingConfig) -> tuple[Any, Any]:
    """The captioner to train and its processor: a fresh tiny BLIP, or one loaded (LoRA-wrapped for "lora")."""
    network, processor = (
        build_tiny_blip(captions, seed=recipe.seed) if model == TINY else load_captioner(resolve_captioner(model))[::-1]
    )
    if recipe.method == "lora":
        from peft import LoraConfig, get_peft_model

        network = get_peft_model(
            network, LoraConfig(r=recipe.lora_rank, lora_alpha=recipe.lora_rank, target_modules=["query", "value"])
        )
    return network, processor


@dataclass(frozen=True)
class _Batches:
    """Every training image and caption as the captioner reads them: pixels, token ids, mask, labels."""

    pixel_values: Any
    input_ids: Any
    attention: Any
    labels: Any

    @classmethod
    def of(cls, processor: Any, network: Any, samples: Sequence[Sample], captions: Sequence[str]) -> _Batches:
        images = [load_rgb(s.image_path) for s in samples]
        pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
        text = processor.tokenizer(
            list(captions), padding="max_length", truncation=True, max_length=32, return_tensors="pt"
        )
        input_ids, attention = text["input_ids"].clone(), text["attention_mask"]
        input_ids[:, 0] = network.config.text_config.bos_token_id  # BLIP decodes from [DEC], not [CLS]
        return cls(pixel_values, input_ids, attention, input_ids.masked_fill(attention == 0, -100))

    def loss(self, recipe: CaptionerTrainingConfig) -> Callable[[Sequence[Any], int, int], Any]:
        """The loss of micro-batch ``micro`` (drawn as :func:`epoch_batches` draws it), with the recipe's shifts."""
        import torch

        n = len(self.pixel_values)

        def loss_fn(modules: Sequence[Any], micro: int, process: int) -> Any:
            (captioner,) = modules
            index = torch.from_numpy(epoch_batches(n, recipe.batch_size, recipe.seed, micro))
            pixels = self.pixel_values[index]
            if recipe.shift_augmentation:  # a few pixels of random translation: the data set is small
                k = recipe.shift_augmentation
                shifts = step_rng(recipe.seed, micro, process).integers(-k, k + 1, size=(len(index), 2))
                pixels = torch.stack(
                    [torch.roll(p, (int(dy), int(dx)), dims=(1, 2)) for p, (dy, dx) in zip(pixels, shifts, strict=True)]
                )
            output = captioner(
                pixel_values=pixels,
                input_ids=self.input_ids[index],
                attention_mask=self.attention[index],
                labels=self.labels[index],
            )
            return output.loss

        return loss_fn


def caption_agreement(captions: Sequence[str], reference: Sequence[str]) -> dict[str, float]:
    """How much of each reference caption's wording a generated caption gets right, position by position.

    The digits' captions share one template, so word i names the same property in both; "digit" is the
    class word (after "handwritten"), each other attribute is scored the same way.
    """
    fields = ("coverage", "darkness", "slant", "aspect", "size", "_", "digit", "_", "_", "vertical", "horizontal")
    hits: dict[str, list[bool]] = {f: [] for f in fields if f != "_"}
    for got, want in zip(captions, reference, strict=True):
        got_words, want_words = caption_words_in_order(got), caption_words_in_order(want)
        for i, name in enumerate(fields, start=1):
            if name != "_":
                hits[name].append(i < len(got_words) and got_words[i] == want_words[i])
    return {name: float(np.mean(v)) for name, v in hits.items()}


def caption_words_in_order(caption: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", caption.lower())
