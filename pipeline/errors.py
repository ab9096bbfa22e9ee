"""Errors a user can act on: each says what was expected, what came, and how to fix it."""

from __future__ import annotations


class ContrastgenError(ValueError):
    """Base class of every error contrastgen raises on purpose."""


class ConfigError(ContrastgenError):
    """The run configuration is invalid; lists every problem at once."""


class InputFileError(ContrastgenError):
    """An input file cannot be read at all (not a row-level problem: those become rejected rows)."""

    def __init__(self, path: object, message: str, line: int | None = None, field: str | None = None):
        where = f"{path}" + (f", line {line}" if line is not None else "") + (
            f", field '{field}'" if field else ""
        )
        super().__init__(f"{where}: {message}")
        self.path, self.line, self.field = path, line, field


class RunLockedError(ContrastgenError):
    """Another contrastgen run holds the output directory."""


class TemplateError(ContrastgenError):
    """A prompt template file is malformed."""


class DatasetError(ContrastgenError):
    """A directory is not a (complete) contrastgen dataset."""


class EngineError(ContrastgenError):
    """An engine failed in a way retrying will not fix (a rejected request, a malformed answer)."""


class TransientEngineError(EngineError):
    """An engine failed in a way that may pass (overload, timeout, a dead worker): the flow's task retries it."""


class EngineTimeoutError(TransientEngineError):
    """An engine call ran past ``engine.call_timeout_s`` (the pool retries it once, then rejects its units)."""


class OutputFolderError(ContrastgenError):
    """``--out`` is not a folder contrastgen may write: a file, a foreign folder, another kind's dataset."""


class OutputWriteError(ContrastgenError):
    """Writing an output file failed (disk full, quota, read-only file system): names the file and the fix."""

    def __init__(self, path: object, exc: OSError):
        import errno
        import os

        what = os.strerror(exc.errno) if exc.errno else str(exc)
        fix = {errno.ENOSPC: "free space on that file system (or pass another --out)",
               errno.EDQUOT: "raise the quota (or pass another --out)",
               errno.EROFS: "pass an --out on a writable file system",
               errno.EACCES: "fix the folder's permissions (or pass another --out)"}.get(exc.errno, "check the file system")
        super().__init__(f"{path}: expected to write this file, but the file system said: {what}. Fix: {fix}; then "
                         "rerun the same command: finished parts are kept and reused")
        self.path, self.errno = path, exc.errno
