"""The seeded generators of the lab's training runs, apart from the loop so that the loop and its plug-ins
(the losses, DP-SGD's sampling and noise) draw from them without importing one another.

Every random draw of micro-batch m comes from a generator that is a pure function of (seed, m, process,
stream), so a resumed run takes exactly the steps the uninterrupted run would have taken.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def step_rng(seed: int, micro_step: int, process: int = 0, stream: int = 0) -> np.random.Generator:
    """The generator of one micro-batch: a pure function of its coordinates."""
    return np.random.default_rng([seed, micro_step, process, stream])


def torch_generator(rng: np.random.Generator) -> torch.Generator:
    """A torch generator seeded from ``rng`` (one draw), for torch's own samplers."""
    import torch

    return torch.Generator().manual_seed(int(rng.integers(2**62)))
