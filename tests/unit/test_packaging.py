"""A non-editable install (what an image does) carries every file the code reads at run time: the migrations, the
feature SQL and the Feast repository. Built from this checkout with the build backend pip uses."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Folders whose non-Python files the code opens at run time (recstack/db.py, recstack/features/build.py,
# Settings.feature_repo); every file in them must ship.
RUNTIME_FOLDERS = ["recstack/migrations", "recstack/features/sql", "feature_repo"]


def _runtime_files() -> set[str]:
    found = set()
    for folder in RUNTIME_FOLDERS:
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                found.add(path.relative_to(ROOT).as_posix())
    return found


def _clean_copy(dest: Path) -> Path:
    """The sources as a fresh clone has them (setuptools reuses a checkout's build/ folder, hiding what is missing)."""
    junk = shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__", "catboost_info", "bench")
    shutil.copytree(ROOT, dest, ignore=junk)
    shutil.copy2(ROOT / "feature_repo" / ".feastignore", dest / "feature_repo" / ".feastignore")
    return dest


def test_the_wheel_contains_every_file_read_at_run_time(tmp_path: Path) -> None:
    source = _clean_copy(tmp_path / "src")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("recstack-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    expected = _runtime_files()
    assert any(name.endswith(".sql") for name in expected) and "feature_repo/feature_store.yaml" in expected
    missing = sorted(expected - shipped)
    assert not missing, f"the wheel lacks files the code reads at run time: {missing}"
    for package in ("recstack", "serving", "training", "validation"):
        assert f"{package}/__init__.py" in shipped
