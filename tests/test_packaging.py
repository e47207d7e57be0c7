"""The wheel is the product: what `pip install .` installs must hold everything Cabinet reads
at run time (templates, static files, catalogues, migrations), not only the Python code.

The wheel is built once per test session, from an sdist (as ``python -m build`` does), without
network access (``--no-isolation``: ``build`` and ``setuptools`` are test dependencies).
``scripts/smoke_wheel.sh`` goes further: it installs the wheel and runs the service.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def source_files(folder: str, suffix: str = "") -> set[str]:
    """Files under ``folder`` of the checkout, relative to the checkout, without caches."""
    return {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / folder).rglob(f"*{suffix}")
        if path.is_file() and "__pycache__" not in path.parts
    }


# What a build reads; copied so that parallel builds never share the checkout's build folders.
SOURCES = ("pyproject.toml", "README.md", "daemon", "mailer", "templates")


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
        capture_output=True, text=True, check=False,
    )
    assert built.returncode == 0, f"building failed:\n{built.stdout}\n{built.stderr}"
    return out


@pytest.fixture(scope="session")
def wheel(dist: Path) -> Path:
    [found] = dist.glob("cabinet-*.whl")
    return found


@pytest.fixture(scope="session")
def wheel_files(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_wheel_holds_every_template_static_file_and_catalogue(wheel_files: set[str]) -> None:
    templates = source_files("templates")
    assert {"templates/email/en/invitation.subject", "templates/email/fr/invitation.html",
            "templates/email/layout.html", "templates/web/layout.html", "templates/web/static/cabinet.css",
            "templates/web/locale/fr.po"} <= templates
    missing = {name for name in templates if "daemon/" + name not in wheel_files}
    assert not missing, f"not in the wheel: {sorted(missing)}"


def test_wheel_holds_every_module_and_migration(wheel_files: set[str]) -> None:
    # Packages are listed by hand in pyproject.toml: a new package folder must be added there.
    code = source_files("daemon", ".py") | source_files("mailer", ".py")
    missing = sorted(code - wheel_files)
    assert not missing, f"not in the wheel (add the package to [tool.setuptools] packages): {missing}"
    migrations = source_files("daemon/migrations")
    assert "daemon/migrations/script.py.mako" in migrations
    assert migrations <= wheel_files


def test_wheel_holds_nothing_else(wheel_files: set[str]) -> None:
    stray = sorted(
        name for name in wheel_files
        if not name.startswith(("daemon/", "mailer/", "cabinet-")) or name.endswith(".pyc") or "__pycache__" in name
    )
    assert not stray


def test_sdist_holds_the_templates(dist: Path) -> None:
    [sdist] = dist.glob("cabinet-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    missing = sorted(source_files("templates") - names)
    assert not missing


def test_installed_layout_finds_its_templates_without_the_checkout(wheel: Path, tmp_path: Path) -> None:
    """Unpacked as pip installs it, the built-in templates are found through importlib.resources
    from any folder, with neither the checkout nor the editable install on the path."""
    site = tmp_path / "site-packages"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = (
        "import sys; sys.path[:0] = [sys.argv[1]]\n"
        "from daemon.template_folders import builtin_folder\n"
        "folder = builtin_folder()\n"
        "assert (folder / 'email' / 'en' / 'invitation.subject').is_file(), folder\n"
        "assert (folder / 'web' / 'static' / 'cabinet.css').is_file(), folder\n"
        "print(folder)\n"
    )
    # -S: no site-packages, so the editable install's path hook cannot answer instead.
    found = subprocess.run([sys.executable, "-S", "-c", probe, str(site)], cwd=elsewhere,
                           capture_output=True, text=True, check=False)
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()) == site / "daemon" / "templates"
