"""The layer contract (pyproject [tool.importlinter]) holds, and it catches an upward import."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).parent / "lint-imports"


def lint_imports(package_parent: Path) -> subprocess.CompletedProcess:
    # lint-imports puts its working folder first on the path, so a copy there is what it reads
    return subprocess.run([str(LINT), str(ROOT / "pyproject.toml"), "--no-cache"],
                          cwd=package_parent, capture_output=True, text=True)


def test_the_package_keeps_its_layers():
    proc = lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 kept, 0 broken" in proc.stdout


def test_an_engine_module_that_imports_a_pipeline_breaks_the_contract(tmp_path):
    shutil.copytree(ROOT / "jaxpet", tmp_path / "jaxpet",
                    ignore=shutil.ignore_patterns("__pycache__"))
    optim = tmp_path / "jaxpet" / "engine" / "optim.py"
    optim.write_text(optim.read_text() + "\nfrom jaxpet.pipelines import pet  # noqa\n")
    proc = lint_imports(tmp_path)
    assert proc.returncode != 0
    assert "jaxpet.engine is not allowed to import jaxpet.pipelines" in proc.stdout
    assert "jaxpet.engine.optim -> jaxpet.pipelines.pet" in proc.stdout
