"""Third-party noise: what the Hugging Face stack prints that a diffmia user cannot act on.

Unless ``--verbose`` is given, the command line silences:

- transformers' and diffusers' progress bars for loading and writing weights (diffmia shows its own progress);
- transformers' notice that an image processor falls back to its PIL version because torchvision is not installed
  (diffmia never uses torchvision: the PIL processors are what it means to run);
- diffusers' notice that the safety checker is disabled (diffmia disables it unless ``target.safety_checker``).

Always, whatever the flag: diffusers' notice that a LoRA has no text-encoder weights, at the load of an adapter diffmia
fine-tuned itself (they adapt the denoiser alone, so the notice says nothing; :func:`dropping` scopes the filter to
that one call, and a user's LoRA keeps the notice, which may flag a real mismatch).

Every other message of those libraries still shows. The libraries are not imported here (that takes seconds):
the settings apply when they are first imported.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any

HARMLESS = (
    re.compile(r"requires torchvision \(not installed\); falling back to `\w+Pil`"),
    re.compile(r"You have disabled the safety checker"),
)


class _DropHarmless(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(pattern.search(message) for pattern in HARMLESS)


class _Drop(logging.Filter):
    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


@contextlib.contextmanager
def dropping(logger: str, pattern: str) -> Iterator[None]:
    """While the block runs, the messages of ``logger`` that match ``pattern`` are dropped (a notice known to be
    harmless in that one call, and not elsewhere)."""
    drop = _Drop(pattern)
    logging.getLogger(logger).addFilter(drop)
    try:
        yield
    finally:
        logging.getLogger(logger).removeFilter(drop)


def _quiet_library_logging(module: ModuleType) -> None:
    """On ``transformers.utils.logging`` or ``diffusers.utils.logging``: no bars, no harmless notices."""
    module.disable_progress_bar()
    module._configure_library_root_logger()
    module._default_handler.addFilter(_DropHarmless())


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs an action on a module right after it is first imported (and finds nothing itself)."""

    def __init__(self, actions: dict[str, Callable[[ModuleType], None]]) -> None:
        self.actions = actions

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        action = self.actions.get(fullname)
        if action is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        run = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            action(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def quiet_third_parties() -> None:
    """Silence the known-harmless third-party output described above, now or on first import."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    actions: dict[str, Callable[[ModuleType], None]] = {}
    for name in ("transformers.utils.logging", "diffusers.utils.logging"):
        if name in sys.modules:
            _quiet_library_logging(sys.modules[name])
        else:
            actions[name] = _quiet_library_logging
    if actions and not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(actions))
