"""Optional extras: what a command or feature needs beyond the core is an extra, and its absence is one error
naming the extra, before any work."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

from diffmia.cli import main
from diffmia.config import PrivacyConfig
from diffmia.errors import MissingDependencyError, optional

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_extras_hold_what_one_command_or_feature_needs_and_the_core_does_not():
    core = " ".join(PYPROJECT["project"]["dependencies"])
    extras = PYPROJECT["project"]["optional-dependencies"]
    for extra, package in (("serve", "uvicorn"), ("dp", "opacus"), ("ray", "ray")):
        assert [d.split(">")[0] for d in extras[extra]] == [package] and package not in core
    assert extras["all"] == ["diffmia[serve,dp,ray]"] and "diffmia[all]" in extras["dev"]


def test_a_missing_optional_package_names_the_extra_that_installs_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # an import of it fails as if it were not installed
    with pytest.raises(MissingDependencyError) as error:
        optional("uvicorn", extra="serve", purpose="diffmia serve")
    assert str(error.value) == (
        "the optional package 'uvicorn' is not installed (needed for diffmia serve); install it with: "
        "pip install 'diffmia[serve]'"
    )
    assert optional("json", extra="x", purpose="y").dumps([1]) == "[1]"


def test_serve_without_its_extra_is_one_error_line_before_any_model_loads(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert main(["serve", "no-such-model-folder"]) == 2  # refused before the model is looked for
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("Error: ") and "pip install 'diffmia[serve]'" in err


def test_dp_sgd_without_its_extra_is_refused_when_it_is_planned(monkeypatch):
    from diffmia.lab.privacy import plan_privacy

    for module in ("opacus", "opacus.accountants", "opacus.accountants.utils"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingDependencyError, match=r"needed for DP-SGD fine-tuning.*pip install 'diffmia\[dp\]'"):
        plan_privacy(PrivacyConfig(epsilon=4.0), 100, 10, 50)
