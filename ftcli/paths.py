"""Where ftcli keeps its own files: the cache root (FTCLI_CACHE, else ~/.cache/ftcli) for builtin models and
prepared data, checked to be a folder ftcli can write before anything is put there."""

from __future__ import annotations

import os
from pathlib import Path

from ftcli.errors import UserError


def cache_root() -> Path:
    return Path(os.environ.get("FTCLI_CACHE") or Path.home() / ".cache" / "ftcli")


def writable_dir(path: Path, setting: str = "FTCLI_CACHE") -> Path:
    """`path`, created if missing; a file in its place or a folder ftcli cannot write is a one-line error naming
    the setting that chose it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
        raise UserError(
            f"{setting}: {blocker} is a file, not a folder; point {setting} at a folder"
        ) from None
    except OSError as exc:
        raise UserError(
            f"{setting}: cannot create {path} ({exc.strerror}); point {setting} at a folder you can write to"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{setting}: {path} is not writable; point {setting} at a folder you can write to")
    return path


def cache_dir(*parts: str) -> Path:
    """A writable folder under the cache root."""
    setting = "FTCLI_CACHE" if os.environ.get("FTCLI_CACHE") else "FTCLI_CACHE (default ~/.cache/ftcli)"
    return writable_dir(cache_root().joinpath(*parts), setting)
