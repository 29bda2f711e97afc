"""The user-error types. Anything raised as a UserError exits 2 with its one-line message."""

from __future__ import annotations

import errno


class UserError(Exception):
    """A problem the user can fix (recipe, data, paths). Exit code 2, one line, no traceback."""

    exit_code = 2


class RecipeError(UserError):
    """A recipe problem, located by key path and, where known, file and line."""

    def __init__(self, message: str, key: str | None = None, where: str | None = None):
        self.message, self.key, self.where = message, key, where
        super().__init__(str(self))

    def __str__(self) -> str:
        head = " ".join(p for p in (self.where, self.key) if p)
        return f"{head}: {self.message}" if head else self.message


class DataError(UserError):
    """A dataset problem, located by file, row (1-based) and field."""

    def __init__(
        self, message: str, file: str | None = None, row: int | None = None, field: str | None = None
    ):
        self.message, self.file, self.row, self.field = message, file, row, field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file or ""
        if self.row is not None:
            where += f" row {self.row}"
        if self.field:
            where += f" field '{self.field}'"
        return f"{where.strip()}: {self.message}" if where.strip() else self.message


# An OSError with one of these numbers is about the user's files or machine, not a bug: reported like a user error.
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: (
        "the disk is full",
        "free space (or point output.dir / FTCLI_CACHE elsewhere) and run again; --resume continues a run",
    ),
    errno.EDQUOT: ("the disk quota is exceeded", "free space and run again; --resume continues a run"),
    errno.ENAMETOOLONG: ("the file name is too long", "shorten the path"),
    errno.EROFS: (
        "the file system is read-only",
        "point output.dir, data.cache_dir or FTCLI_CACHE elsewhere",
    ),
    errno.EACCES: (
        "permission denied",
        "point output.dir, data.cache_dir or FTCLI_CACHE at a folder you can write",
    ),
    errno.EPERM: (
        "permission denied",
        "point output.dir, data.cache_dir or FTCLI_CACHE at a folder you can write",
    ),
}


def environment_error(exc: BaseException) -> str | None:
    """The one-line message for an OSError caused by the machine (full disk, long name, read-only), else None."""
    if not isinstance(exc, OSError) or exc.errno not in ENVIRONMENT_ERRNOS:
        return None
    what, advice = ENVIRONMENT_ERRNOS[exc.errno]
    return f"{exc.filename}: {what}; {advice}" if exc.filename else f"{what}; {advice}"
