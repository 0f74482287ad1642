"""Mutation testing (mutmut 3) of the modules whose mistakes would silently change results.

Each group of modules is mutated against its own fast tests only (``-m "not slow"``, ``-x``), with one worker.
A group runs in its own folder ``.mutmut/<group>/``: links to ``src/`` and ``tests/`` and a ``pyproject.toml``
holding the project's pytest settings and the group's ``[tool.mutmut]``. mutmut copies the code into
``.mutmut/<group>/mutants/`` and mutates only that copy; ``src/`` is never written. Ends with the killed share
per module. Not a test and not part of ``make test``; run: ``make mutate``, or

    .venv/bin/python benchmarks/mutate.py [--resume] [GROUP ...]      # default: every group, in this order
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import tomli_w

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".mutmut"
PKG = "src/diffmia"

# group: (modules to mutate, their own tests); torch-heavy groups fork their workers from a clean fork server
GROUPS: dict[str, tuple[list[str], list[str]]] = {
    "metrics": ([f"{PKG}/metrics.py"], ["tests/test_metrics.py"]),
    "distances": ([f"{PKG}/distances.py"], ["tests/test_distances.py"]),
    "attacks": (
        [f"{PKG}/attacks/{name}.py" for name in ("__init__", "_base", "classifier", "distribution", "threshold")],
        ["tests/attacks/test_attack_models.py"],
    ),
    "baselines": ([f"{PKG}/attacks/baselines/*"], ["tests/attacks/test_baselines.py"]),
    "features": ([f"{PKG}/features.py"], ["tests/test_features.py"]),
    "settest": ([f"{PKG}/settest.py"], ["tests/test_settest.py"]),
    "provenance": ([f"{PKG}/provenance/crossfit.py"], ["tests/provenance/test_crossfit.py"]),
    "targets": ([f"{PKG}/targets/*"], ["tests/targets/"]),
}
FORKSERVER = {"baselines", "targets"}

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 37: "type check"}
STATUS |= dict.fromkeys((-24, 24, 152, 255, 36), "timeout")


def mutmut_config(group: str, extra: list[str]) -> dict[str, object]:
    modules, tests = GROUPS[group]
    return {
        "source_paths": ["src"],  # the whole package is copied; only ``only_mutate`` is mutated
        "only_mutate": modules,
        "pytest_add_cli_args_test_selection": tests,
        # mutmut adds -x; one hypothesis seed so that a mutant's verdict does not depend on the draw
        "pytest_add_cli_args": ["-m", "not slow", "-p", "no:cacheprovider", "--hypothesis-seed=0", *extra],
        "use_git_change_detection": False,  # mutmut would otherwise call git in the project
        "process_isolation": "forkserver" if group in FORKSERVER else "fork",
    }


def prepare(group: str, resume: bool, extra: list[str]) -> Path:
    """The group's working folder, made afresh unless ``resume`` (then mutmut keeps its earlier verdicts)."""
    folder = WORK / group
    if folder.exists() and not resume:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("src", "tests"):
        if not (folder / name).exists():
            (folder / name).symlink_to(ROOT / name, target_is_directory=True)
    pytest_settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]
    settings = {"tool": {"pytest": pytest_settings, "mutmut": mutmut_config(group, extra)}}
    (folder / "pyproject.toml").write_text(tomli_w.dumps(settings))
    return folder


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run a mutant's tests fastest first, by the durations of mutmut's stats run, so a killed mutant costs little.

    A pytest hook: ``main`` loads this file into mutmut's test runs with ``PYTEST_PLUGINS=mutate``.
    """
    stats = Path("mutmut-stats.json")  # mutmut runs pytest inside its mutants/ folder
    if stats.exists():
        durations = json.loads(stats.read_text())["duration_by_test"]
        items.sort(key=lambda item: durations.get(item.nodeid, 0.0))


def verdicts(folder: Path) -> dict[str, dict[str, int]]:
    """Mutant counts by status for each mutated module of a group, read from mutmut's ``.meta`` files."""
    counts: dict[str, dict[str, int]] = {}
    for meta in sorted((folder / "mutants").rglob("*.py.meta")):
        module = str(meta.relative_to(folder / "mutants"))[: -len(".meta")]
        tally = counts.setdefault(module, {})
        for code in json.loads(meta.read_text())["exit_code_by_key"].values():
            status = "not checked" if code is None else STATUS.get(code, "suspicious")
            tally[status] = tally.get(status, 0) + 1
    return counts


def report(counts: dict[str, dict[str, int]]) -> None:
    columns = ("killed", "survived", "timeout")
    print(f"\n{'module':42}{'mutants':>8}" + "".join(f"{c:>9}" for c in (*columns, "other")) + "  killed share")
    for module, tally in counts.items():
        total = sum(tally.values())
        numbers = [tally.get(c, 0) for c in columns]
        share = f"{numbers[0] / total:.1%}" if total else "-"
        print(f"{module:42}{total:8}" + "".join(f"{n:9}" for n in (*numbers, total - sum(numbers))) + f"{share:>14}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("groups", nargs="*", metavar="GROUP", help=f"any of {', '.join(GROUPS)} (default: all)")
    parser.add_argument("--resume", action="store_true", help="keep the verdicts of an earlier (interrupted) run")
    parser.add_argument("--pytest-args", default="", help="more pytest arguments, e.g. '-k \"not check_x\"'")
    args = parser.parse_args()
    unknown = [g for g in args.groups if g not in GROUPS]
    if unknown:
        parser.error(f"unknown group {', '.join(unknown)}; valid: {', '.join(GROUPS)}")
    mutmut = Path(sys.executable).with_name("mutmut")
    # two cores shared with other jobs: one worker, one thread per worker
    env = os.environ | {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    env |= {
        "PYTEST_PLUGINS": "mutate",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "benchmarks"), env.get("PYTHONPATH")])),
    }
    counts: dict[str, dict[str, int]] = {}
    for group in args.groups or list(GROUPS):
        folder = prepare(group, args.resume, shlex.split(args.pytest_args))
        start = time.monotonic()
        print(f"== {group}: mutmut in {folder.relative_to(ROOT)}", flush=True)
        code = subprocess.call([str(mutmut), "run", "--max-children", "1"], cwd=folder, env=env)
        print(f"== {group}: exit {code} after {(time.monotonic() - start) / 60:.1f} min", flush=True)
        counts |= verdicts(folder)
    report(counts)


if __name__ == "__main__":
    main()
