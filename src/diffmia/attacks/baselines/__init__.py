"""Peer baselines scored in the audit's harness and metrics, each needing no shadow model.

- ``gan_leaks``: full black-box, caption-free (GAN-Leaks style): a candidate's similarity to its nearest
  neighbour among N generations of the target from an empty prompt.
- ``graybox``: reference attacks that need the target's weights (a local diffusers pipeline): the denoising
  loss, SecMI's step-wise posterior estimation error and PIA's proximal-initialisation error.
"""

from diffmia.attacks.baselines.gan_leaks import gan_leaks_queries, nearest_generation_scores
from diffmia.attacks.baselines.graybox import GRAYBOX_ATTACKS, graybox_scores

__all__ = ["GRAYBOX_ATTACKS", "gan_leaks_queries", "graybox_scores", "nearest_generation_scores"]
