"""Mutation testing driver: runs mutmut on each core module with only the tests that check it."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "runs" / "mutate"
# Test helpers every selected test file may import.
TEST_HELPERS = ("conftest.py", "tiny_models.py", "tiny_tokenizers.py", "tiny_t5.py", "data")
PRELOAD = ("pytest", "numpy", "jax", "jax.numpy", "optax", "flax.linen", "transformers")
KILLED = {"killed", "timeout", "caught by type check"}


def load_settings() -> tuple[dict, dict[str, list[str]], dict]:
    """The shared [tool.mutmut] keys, the module -> tests table, and the pytest options."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mutmut = dict(pyproject["tool"]["mutmut"])
    modules = mutmut.pop("modules")
    return mutmut, modules, pyproject["tool"].get("pytest", {}).get("ini_options", {})


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def prepare(module: str, tests: list[str], shared: dict, pytest_options: dict, fresh: bool) -> Path:
    """The module's work folder: jaxpet/, its tests and helpers, a pyproject for mutmut.

    Without `fresh`, an existing folder keeps its mutants and their verdicts (mutmut then runs
    only the unchecked ones) and gets the current tests.
    """
    work = WORK / module.replace("/", "_").removesuffix(".py")
    if fresh:
        shutil.rmtree(work, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.rmtree(work / "jaxpet", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    # The committed library, not the working tree: an edit in progress (or a bug planted to
    # check a test) must not leak into the score.
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD", "jaxpet"],
                             check=True, stdout=subprocess.PIPE).stdout
    subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
    shutil.rmtree(work / "tests", ignore_errors=True)
    (work / "tests").mkdir(parents=True)
    present = [t for t in tests if (ROOT / t).exists()]
    for name in TEST_HELPERS:
        source = ROOT / "tests" / name
        if source.is_dir():
            shutil.copytree(source, work / "tests" / name, ignore=ignore)
        elif source.exists():
            shutil.copy2(source, work / "tests" / name)
    for test in present:
        shutil.copy2(ROOT / test, work / test)
    # The fork server imports these once, so each mutant's process starts with them loaded.
    preload = PRELOAD + (module.removesuffix(".py").replace("/", "."),)
    (work / "preload.txt").write_text("\n".join(preload) + "\n")
    config = dict(
        shared,
        only_mutate=[module],
        pytest_add_cli_args_test_selection=present,
        forkserver_warmup="import",
        preload_modules_file=str(work / "preload.txt"),
    )
    lines = ["[tool.pytest.ini_options]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in pytest_options.items() if k != "testpaths"]
    lines += ["", "[tool.mutmut]"] + [f"{k} = {toml_value(v)}" for k, v in config.items()]
    (work / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return work


def mutmut(work: Path, *args: str, capture: bool = True) -> str:
    """Runs the mutmut next to this interpreter inside the work folder."""
    exe = Path(sys.executable).parent / "mutmut"
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", PYTHONDONTWRITEBYTECODE="1",
        # Every mutant's process starts with empty in-memory compile caches: XLA executables
        # kept on disk (keyed by the lowered program, so a mutated one never hits a clean
        # one's entry) spare recompiling what the mutant did not change, e.g. each primitive
        # of a test that runs eagerly.
        JAX_COMPILATION_CACHE_DIR=str(work / "jax-cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
    )
    done = subprocess.run(
        [str(exe), *args], cwd=work, env=env, text=True,
        stdout=subprocess.PIPE if capture else None, stderr=subprocess.STDOUT if capture else None,
    )
    if done.returncode != 0:
        raise SystemExit(f"mutmut {' '.join(args)} failed in {work} (exit {done.returncode})"
                         + (f":\n{done.stdout[-4000:]}" if capture else ""))
    return done.stdout if capture else ""


def statuses(work: Path) -> dict[str, str]:
    """mutant name -> mutmut's verdict."""
    listing = mutmut(work, "results", "--all", "true")
    return dict(re.findall(r"^\s+(\S+): (.+)$", listing, re.M))


def survivors(work: Path) -> list[str]:
    return sorted(name for name, status in statuses(work).items() if status not in KILLED)


def report(module: str, work: Path, seconds: float, show_diffs: bool) -> tuple[int, int]:
    """Prints killed / total and every mutant that was not killed; returns (killed, total)."""
    verdicts = statuses(work)
    killed = sum(status in KILLED for status in verdicts.values())
    checked = sum(status != "not checked" for status in verdicts.values())
    print(f"\n== {module}: {killed} / {len(verdicts)} killed "
          f"({100.0 * killed / max(len(verdicts), 1):.1f}%) in {seconds:.0f} s"
          + (f"; only {checked} checked so far" if checked < len(verdicts) else ""))
    for name, status in sorted(verdicts.items()):
        if status not in KILLED and status != "not checked":
            print(f"   {status}: {name}")
            if show_diffs:
                print(mutmut(work, "show", name))
    return killed, len(verdicts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("modules", nargs="*", help="e.g. jaxpet/losses.py (default: all)")
    parser.add_argument("--diffs", action="store_true", help="print each survivor's diff")
    parser.add_argument("--tests", nargs="+", help="test files to use instead of the table's")
    parser.add_argument("--report", action="store_true",
                        help="print the verdicts so far (also of a run in progress); run nothing")
    parser.add_argument("--fresh", action="store_true", help="forget earlier verdicts")
    parser.add_argument("--children", type=int, default=1,
                        help="mutants tested at once (default 1: the cores are often shared)")
    parser.add_argument(
        "--survivors", action="store_true", help="recheck only the mutants that were not killed"
    )
    args = parser.parse_args()
    shared, table, pytest_options = load_settings()
    unknown = [m for m in args.modules if m not in table]
    if unknown:
        raise SystemExit(f"{unknown} not in pyproject.toml [tool.mutmut.modules]: {list(table)}")
    scores = {}
    for module in args.modules or list(table):
        if args.report:
            work = WORK / module.replace("/", "_").removesuffix(".py")
            if (work / "mutants").exists():
                scores[module] = report(module, work, 0.0, args.diffs)
            continue
        work = prepare(module, args.tests or table[module], shared, pytest_options, args.fresh)
        names = survivors(work) if args.survivors and (work / "mutants").exists() else []
        start = time.monotonic()
        mutmut(work, "run", "--max-children", str(args.children), *names, capture=False)
        scores[module] = report(module, work, time.monotonic() - start, args.diffs)
    print("\nmodule                          killed / total")
    for module, (killed, total) in scores.items():
        print(f"{module:32s}{killed:6d} / {total}")


if __name__ == "__main__":
    main()
