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


def prepare(module: str, tests: list[str], shared: dict, pytest_options: dict) -> Path:
    """A fresh work folder: jaxpet/, the module's tests and helpers, a pyproject for mutmut."""
    work = WORK / module.replace("/", "_").removesuffix(".py")
    shutil.rmtree(work, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "jaxpet", work / "jaxpet", ignore=ignore)
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
    config = dict(shared, only_mutate=[module], pytest_add_cli_args_test_selection=present)
    lines = ["[tool.pytest.ini_options]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in pytest_options.items() if k != "testpaths"]
    lines += ["", "[tool.mutmut]"] + [f"{k} = {toml_value(v)}" for k, v in config.items()]
    (work / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return work


def mutmut(work: Path, *args: str, capture: bool = True) -> str:
    """Runs the mutmut next to this interpreter inside the work folder."""
    exe = Path(sys.executable).parent / "mutmut"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run(
        [str(exe), *args], cwd=work, env=env, text=True,
        stdout=subprocess.PIPE if capture else None, stderr=subprocess.STDOUT if capture else None,
    )
    if done.returncode != 0:
        raise SystemExit(f"mutmut {' '.join(args)} failed in {work} (exit {done.returncode})"
                         + (f":\n{done.stdout[-4000:]}" if capture else ""))
    return done.stdout if capture else ""


def report(module: str, work: Path, seconds: float, show_diffs: bool) -> tuple[int, int]:
    """Prints killed / total and every mutant that was not killed; returns (killed, total)."""
    statuses = dict(re.findall(r"^\s+(\S+): (.+)$", mutmut(work, "results", "--all", "true"), re.M))
    killed = sum(status in KILLED for status in statuses.values())
    print(f"\n== {module}: {killed} / {len(statuses)} killed "
          f"({100.0 * killed / max(len(statuses), 1):.1f}%) in {seconds:.0f} s")
    for name, status in sorted(statuses.items()):
        if status not in KILLED:
            print(f"   {status}: {name}")
            if show_diffs:
                print(mutmut(work, "show", name))
    return killed, len(statuses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("modules", nargs="*", help="e.g. jaxpet/losses.py (default: all)")
    parser.add_argument("--diffs", action="store_true", help="print each survivor's diff")
    args = parser.parse_args()
    shared, table, pytest_options = load_settings()
    unknown = [m for m in args.modules if m not in table]
    if unknown:
        raise SystemExit(f"{unknown} not in pyproject.toml [tool.mutmut.modules]: {list(table)}")
    scores = {}
    for module in args.modules or list(table):
        work = prepare(module, table[module], shared, pytest_options)
        start = time.monotonic()
        # One child: the machine's cores are shared.
        mutmut(work, "run", "--max-children", "1", capture=False)
        scores[module] = report(module, work, time.monotonic() - start, args.diffs)
    print("\nmodule                          killed / total")
    for module, (killed, total) in scores.items():
        print(f"{module:32s}{killed:6d} / {total}")


if __name__ == "__main__":
    main()
