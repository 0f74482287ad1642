"""Third-party noise: the Hugging Face stack's harmless notices and loading bars are silenced, nothing else."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from diffmia.quiet import _DropHarmless

SCRIPT = """
import sys
if sys.argv[2] == "quiet":
    from diffmia.quiet import quiet_third_parties
    quiet_third_parties()
import transformers.utils.logging
from transformers import CLIPImageProcessor  # no torchvision here: falls back to the PIL processor, with a notice
from diffusers import StableDiffusionPipeline
transformers.utils.logging.get_logger("transformers.test").warning("a real warning stays")
StableDiffusionPipeline.from_pretrained(sys.argv[1], safety_checker=None)
"""


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("transformers.x", logging.WARNING, __file__, 1, message, None, None)


def test_the_filter_drops_only_the_known_harmless_notices():
    keep = _DropHarmless().filter
    assert not keep(
        _record(
            "`CLIPImageProcessor` requires torchvision (not installed); falling back to "
            "`CLIPImageProcessorPil` for backward compatibility."
        )
    )
    assert not keep(_record("You have disabled the safety checker for <class 'X'> by passing `safety_checker=None`."))
    assert keep(_record("`CLIPImageProcessor` requires torchvision (not installed)"))  # no fallback named: keep
    assert keep(_record("Some weights of the model checkpoint were not used"))


@pytest.mark.slow
def test_a_command_shows_real_warnings_but_not_the_harmless_noise(tiny_model):
    def stderr(mode: str) -> str:
        env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}  # set by in-process runs
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(tiny_model), mode], capture_output=True, text=True, env=env
        )
        assert done.returncode == 0, done.stderr
        return done.stderr

    loud, quiet = stderr("loud"), stderr("quiet")
    for noise in ("requires torchvision (not installed)", "Loading pipeline components", "Loading weights"):
        assert noise in loud and noise not in quiet, noise
    assert "a real warning stays" in loud and "a real warning stays" in quiet
