"""Image sets: a folder of images with a ``metadata.jsonl`` or ``metadata.csv`` beside them.

The convention is that of the ``datasets`` image-folder loader: each record names its image by ``file_name``
(relative to the folder) and may carry a ``caption`` (or ``text``) and a stable ``id``; any other fields are
kept as they are. Every problem in a folder is reported at once, before any model is touched.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from diffmia.errors import DataError
from diffmia.files import atomic_path, read_text
from diffmia.images import decode_image, image_digest, load_rgb
from diffmia.names import Relation
from diffmia.records import Sample
from diffmia.scenarios import SCENARIOS

CAPTION_FIELDS = ("caption", "text")
MAX_LISTED = 5


@dataclass(frozen=True)
class ImageFolder:
    """A loaded image set: its samples in metadata order and every record's extra fields (by sample id)."""

    root: Path
    samples: tuple[Sample, ...]
    extra: dict[str, dict[str, Any]]

    def __len__(self) -> int:
        return len(self.samples)

    def by_id(self) -> dict[str, Sample]:
        return {s.id: s for s in self.samples}


def _read_records(root: Path) -> tuple[list[dict[str, Any]], Path]:
    jsonl, csv_path = root / "metadata.jsonl", root / "metadata.csv"
    if jsonl.is_file():
        records = []
        for number, line in enumerate(read_text(jsonl, DataError).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{jsonl}, line {number}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{jsonl}, line {number}: expected a JSON object, got {type(record).__name__}")
            records.append(record)
        return records, jsonl
    if csv_path.is_file():
        return [dict(row) for row in csv.DictReader(io.StringIO(read_text(csv_path, DataError), newline=""))], csv_path
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    raise DataError(f"image folder {root} has neither metadata.jsonl nor metadata.csv")


def _listed(items: list[str]) -> str:
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


def _check_image(path: Path) -> str | None:
    """None if ``path`` decodes completely as an image (a truncated file fails here), else why not."""
    name = f"image {path}"
    try:
        decode_image(path, what=name)
    except DataError as exc:
        reason = str(exc).removeprefix(f"{name} ")
        return "missing" if reason == "does not exist" else reason
    return None


def load_image_folder(root: str | Path, *, require_captions: bool = False) -> ImageFolder:
    """Read and check an image folder: every file present and decodable, file names and ids unique.

    ``require_captions``: every record must have a non-empty ``caption`` (or ``text``) field.
    """
    root = Path(root)
    records, metadata = _read_records(root)
    if not records:
        raise DataError(f"{metadata} lists no images")
    problems: list[str] = []
    no_name = [str(i + 1) for i, r in enumerate(records) if not str(r.get("file_name") or "").strip()]
    if no_name:
        problems.append(f"records without a file_name: {_listed(no_name)}")
    not_text = [
        f"{i + 1} ({json.dumps(r['file_name'])})"
        for i, r in enumerate(records)
        if r.get("file_name") and not isinstance(r["file_name"], str)
    ]
    if not_text:
        problems.append(f"file_name is not text in records: {_listed(not_text)}")
    named = [r for r in records if isinstance(r.get("file_name"), str) and r["file_name"].strip()]
    ids = [str(r.get("id") or r["file_name"]) for r in named]
    for what, values in (("file_name", [r["file_name"] for r in named]), ("id", ids)):
        repeated = [value for value, count in Counter(values).items() if count > 1]
        if repeated:
            problems.append(f"duplicate {what}: {_listed(repeated)}")
    caption_field = next((f for f in CAPTION_FIELDS if any(f in r for r in named)), None)
    if require_captions:
        if caption_field is None:
            problems.append(f"no caption column (expected one of: {', '.join(CAPTION_FIELDS)})")
        else:
            empty = [r["file_name"] for r in named if not str(r.get(caption_field) or "").strip()]
            if empty:
                problems.append(f"no caption for: {_listed(empty)}")
    bad_images = []
    for record in named:
        reason = _check_image(root / record["file_name"])
        if reason:
            bad_images.append(f"{record['file_name']} ({reason})")
    if bad_images:
        problems.append(f"bad images: {_listed(bad_images)}")
    if problems:
        raise DataError(f"{metadata}: " + "; ".join(problems))

    samples, extra = [], {}
    known = {"file_name", "id", *CAPTION_FIELDS}
    for record, sample_id in zip(named, ids, strict=True):
        caption = record.get(caption_field) if caption_field else None
        samples.append(Sample(sample_id, root / record["file_name"], str(caption) if caption else None))
        extra[sample_id] = {k: v for k, v in record.items() if k not in known}
    return ImageFolder(root, tuple(samples), extra)


# --- Audit splits: the target's members and non-members, the attacker's auxiliary sets and shadow splits ---

MIN_CLASS_SIZE = 10


@dataclass(frozen=True)
class MembershipSplit:
    """Members and non-members of one model (the target, or a shadow), each in a fixed order."""

    members: tuple[Sample, ...]
    nonmembers: tuple[Sample, ...]

    @property
    def samples(self) -> tuple[Sample, ...]:
        """Members first, then non-members, each carrying its label."""
        return tuple(replace(s, member=True) for s in self.members) + tuple(
            replace(s, member=False) for s in self.nonmembers
        )

    def to_dict(self) -> dict[str, list[str]]:
        return {"members": [s.id for s in self.members], "nonmembers": [s.id for s in self.nonmembers]}


@dataclass(frozen=True)
class AuxiliarySet:
    """The attacker's auxiliary set D' of one relation to the target's members ("overlap": part real target
    members; "disjoint") and the member / non-member split of every shadow model fine-tuned from it."""

    relation: Relation
    samples: tuple[Sample, ...]
    shadow_splits: tuple[MembershipSplit, ...]
    n_target_members: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": str(self.relation),
            "samples": [s.id for s in self.samples],
            "n_target_members": self.n_target_members,
            "shadows": [split.to_dict() for split in self.shadow_splits],
        }


def plan_auxiliary(
    relation: Relation,
    target: MembershipSplit,
    pool: Sequence[Sample],
    *,
    shadow_members: int,
    overlap: float,
    n_shadows: int,
    rng: np.random.Generator,
) -> AuxiliarySet:
    """Draw D' (2 x ``shadow_members`` images) and one member / non-member split per shadow model.

    "overlap": round(``overlap`` x |D'|) of D' are real target members, the rest comes from ``pool``;
    "disjoint": all of D' comes from ``pool``, which must not hold target images. The splits come in complementary
    pairs (the second shadow of a pair is fine-tuned on the first one's non-members): with an even number of
    shadows every image of D' is a member of exactly half of them, so that no image is a member more often than
    not in the pooled shadow data, and every image has outsider shadows (features.outsiders).
    """
    size = 2 * shadow_members
    relation = Relation(relation)
    n_real = round(overlap * size) if relation is Relation.OVERLAP else 0
    n_pool = size - n_real
    if n_real > len(target.members):
        raise DataError(
            f"D' of scenarios I/II needs {n_real} real target members ({overlap:g} of {size}) but the target has "
            f"{len(target.members)}; lower audit.shadow_members or audit.overlap"
        )
    if n_pool > len(pool):
        raise DataError(
            f"D' of the {relation} scenarios needs {n_pool} auxiliary images but the auxiliary pool has {len(pool)}; "
            "add auxiliary images or lower audit.shadow_members"
        )
    real = [target.members[i] for i in rng.permutation(len(target.members))[:n_real]]
    other = [pool[i] for i in rng.permutation(len(pool))[:n_pool]]
    samples = tuple(real + other)
    splits: list[MembershipSplit] = []
    for j in range(n_shadows):
        if j % 2:
            splits.append(MembershipSplit(splits[-1].nonmembers, splits[-1].members))
            continue
        order = rng.permutation(size)
        splits.append(
            MembershipSplit(
                tuple(samples[i] for i in order[:shadow_members]), tuple(samples[i] for i in order[shadow_members:])
            )
        )
    return AuxiliarySet(relation, samples, tuple(splits), n_real)


def content_digests(samples: Sequence[Sample]) -> dict[str, str]:
    """Each sample's pixel-content digest (equal pixels after RGB conversion, equal digest), by id."""
    return {s.id: image_digest(load_rgb(s.image_path)) for s in samples}


def check_audit_data(
    members: Sequence[Sample],
    nonmembers: Sequence[Sample],
    pool: Sequence[Sample],
    scenarios: Sequence[str],
    *,
    members_need_captions: bool,
) -> None:
    """Every problem of an audit's data at once, before any model is queried.

    Checks: at least ten members and ten non-members; no image (by pixel content) both a member and a
    non-member, nor in the auxiliary pool and the target's data; captions wherever a scenario or a
    fine-tune needs them (given-caption scenarios query with the members' and non-members' captions; D' is
    always fine-tuned on, so the pool needs captions; so do the members when D' overlaps them or the target
    is fine-tuned here).
    """
    problems = []
    for name, group in (("members", members), ("non-members", nonmembers)):
        if len(group) < MIN_CLASS_SIZE:
            problems.append(f"{len(group)} {name}: an audit needs at least {MIN_CLASS_SIZE} of each")
    digests = content_digests([*members, *nonmembers, *pool])
    member_content = {digests[s.id]: s.id for s in members}
    shared = [f"{member_content[digests[s.id]]} = {s.id}" for s in nonmembers if digests[s.id] in member_content]
    if shared:
        problems.append(f"members and non-members share images (same pixels): {_listed(shared)}")
    target_content = member_content | {digests[s.id]: s.id for s in nonmembers}
    leaked = [f"{s.id} = {target_content[digests[s.id]]}" for s in pool if digests[s.id] in target_content]
    if leaked:
        problems.append(f"the auxiliary pool holds images of the target's data (same pixels): {_listed(leaked)}")
    chosen = [SCENARIOS[s] for s in scenarios]
    needs = {"auxiliary pool (shadow models are fine-tuned on it)": pool}
    if any(s.given_caption for s in chosen):
        given = [s.name for s in chosen if s.given_caption]
        needs[f"members (scenario {'/'.join(given)} queries with given captions)"] = members
        needs[f"non-members (scenario {'/'.join(given)} queries with given captions)"] = nonmembers
    elif members_need_captions or any(s.relation is Relation.OVERLAP for s in chosen):
        needs["members (D' of scenarios I/II holds members, and fine-tuning needs captions)"] = members
    for name, group in needs.items():
        missing = [s.id for s in group if not (s.caption and s.caption.strip())]
        if missing:
            problems.append(f"{len(missing)} {name} have no caption: {_listed(missing)}")
    if problems:
        raise DataError("audit data: " + "; ".join(problems))


def write_subset(samples: Sequence[Sample], out_dir: str | Path) -> Path:
    """An image folder listing ``samples`` by absolute path (no copies), for fine-tuning on a subset."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = [
        {"file_name": str(Path(s.image_path).resolve()), "id": s.id, **({"caption": s.caption} if s.caption else {})}
        for s in samples
    ]
    text = "".join(json.dumps(r) + "\n" for r in records)
    metadata = out / "metadata.jsonl"
    if not metadata.exists() or metadata.read_text(encoding="utf-8") != text:
        with atomic_path(metadata) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return out
