"""Captioners: where a query's prompt comes from when the attacker queries the target.

``GivenCaptions`` uses the data set's own captions (scenarios I and III). Captioning models for scenarios II
and IV plug in through the same ``caption(samples)`` call.
"""

from __future__ import annotations

from collections.abc import Sequence

from diffmia.errors import DataError
from diffmia.records import Sample


class GivenCaptions:
    """The samples' own captions; every sample must have one."""

    fingerprint = "given-captions"

    def caption(self, samples: Sequence[Sample]) -> list[str]:
        missing = [s.id for s in samples if not (s.caption and s.caption.strip())]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise DataError(
                f"{len(missing)} samples have no caption ({shown}); this scenario queries with the given captions, "
                "so add them to the metadata or use a scenario that captions the images"
            )
        return [s.caption or "" for s in samples]
