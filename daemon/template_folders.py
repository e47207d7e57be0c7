"""Where templates come from: the operator's override folder first, then the built-in ones.

The built-in templates are the data package ``daemon.templates`` (the top-level
``templates/`` folder of the source, packaged into the wheel), found through
``importlib.resources`` whatever the current folder. ``[templates] dir`` names
a folder with the same layout (``email/fr/invitation.html``,
``web/layout.html``, ``web/static/logo.png``, ``web/locale/fr.po``); each file
in it takes the place of the built-in file of the same name, file by file, the
way Django's and Mailman's template search paths work.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path, PurePosixPath

from daemon.errors import ConfigError

BUILTIN_PACKAGE = "daemon.templates"


def builtin_folder() -> Path:
    """The installed built-in templates as a real folder (jinja2, Babel and aiohttp read files)."""
    folder = files(BUILTIN_PACKAGE)
    if not isinstance(folder, Path):
        # A zipped install (zipapp, egg) has no folder to read from.
        raise ConfigError(f"Cabinet's templates are not a folder ({folder}); install the wheel unpacked with pip")
    return folder


@dataclass(frozen=True)
class TemplateFolders:
    builtin: Path
    override: Path | None = None

    @property
    def roots(self) -> list[Path]:
        """The folders searched, the one that wins first."""
        return [self.override, self.builtin] if self.override is not None else [self.builtin]

    def search_path(self, part: str) -> list[Path]:
        """``part`` (``email``, ``web``) of each folder, for a jinja2 ``FileSystemLoader``."""
        return [root / part for root in self.roots]

    def find(self, relative: str) -> Path | None:
        """The file that wins for ``relative`` (e.g. ``web/static/cabinet.css``), or None.

        ``relative`` may come from a URL: anything that could leave the folders
        (an absolute path, ``..``) finds nothing.
        """
        name = PurePosixPath(relative)
        if name.is_absolute() or ".." in name.parts or "\x00" in relative:
            return None
        for root in self.roots:
            candidate = root / name
            if candidate.is_file():
                return candidate
        return None


def template_folders(override: Path | None) -> TemplateFolders:
    """The built-in templates, under the operator's folder if one is configured (it must exist)."""
    if override is not None and not override.is_dir():
        raise ConfigError(f"[templates] dir {override} is not a folder")
    return TemplateFolders(builtin_folder(), override)
