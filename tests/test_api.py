"""The public API: ``import diffmia`` offers exactly ``__all__``, each name the object its module defines, and
loads the heavy stack only when a name that needs it is first used."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import diffmia
from diffmia.assets import DEMO_CONFIG


def test_all_is_sorted_unique_and_is_what_dir_shows():
    assert diffmia.__all__ == sorted(set(diffmia.__all__))
    assert dir(diffmia) == diffmia.__all__


def test_every_exported_name_is_the_defining_modules_object():
    for name in diffmia.__all__:
        value = getattr(diffmia, name)
        if name == "__version__":
            assert value == importlib.import_module("diffmia.versions").__version__
            continue
        module = importlib.import_module(value.__module__) if hasattr(value, "__module__") else None
        assert module is not None and getattr(module, name, None) is value, name
    demo = diffmia.load_config(DEMO_CONFIG)
    assert demo.audit.finetune_target and demo.audit.scenarios == ["I", "II", "III", "IV"]


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'run_audits'"):
        _ = diffmia.run_audits


@pytest.mark.slow
def test_importing_the_package_loads_no_heavy_dependency():
    code = (
        "import sys, diffmia; heavy = ('torch', 'sklearn', 'pyarrow', 'matplotlib', 'diffusers'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
    code = "import sys, diffmia; diffmia.run_audit; print('sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "True\n"
