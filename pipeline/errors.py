"""Errors a user can act on: each says what was expected, what came, and how to fix it."""

from __future__ import annotations

import errno
import os


class ContrastgenError(ValueError):
    """Base class of every error contrastgen raises on purpose."""


class ConfigError(ContrastgenError):
    """The run configuration is invalid; lists every problem at once."""


class InputFileError(ContrastgenError):
    """An input file cannot be read at all (not a row-level problem: those become rejected rows)."""

    def __init__(self, path: object, message: str, line: int | None = None, field: str | None = None):
        where = f"{path}" + (f", line {line}" if line is not None else "") + (f", field '{field}'" if field else "")
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


class ReplicaDeadError(TransientEngineError):
    """The engine inside a replica died for good (vLLM's ``EngineDeadError``: a GPU Xid, an NCCL error, a worker
    OOM) while its Ray actor lives: not the requests' fault. The pool replaces the replica (kills the actor, Ray
    restarts it with a fresh engine) and reruns the part on a live one."""


class OutputFolderError(ContrastgenError):
    """``--out`` is not a folder contrastgen may write: a file, a foreign folder, another kind's dataset."""


# What a user can do about a file-system refusal, by errno: the CLI's one line for any OSError that reaches it,
# and the fix of an OutputWriteError.
OS_FIXES = {
    errno.ENOSPC: "free space on that file system (or pass another --out); rerun the same command to resume",
    errno.EDQUOT: "raise the quota (or pass another --out); rerun the same command to resume",
    errno.EROFS: "use a folder on a writable file system",
    errno.EACCES: "fix the permissions, or use another folder",
    errno.EPERM: "fix the permissions, or use another folder",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "check the path: a part of it is a file",
    errno.EISDIR: "pass a file, not a folder",
}


class OutputWriteError(ContrastgenError):
    """Writing an output file failed (disk full, quota, read-only file system): names the file and the fix."""

    def __init__(self, path: object, exc: OSError):
        what = os.strerror(exc.errno) if exc.errno else str(exc)
        fix = OS_FIXES.get(exc.errno or 0, "check the file system")
        super().__init__(
            f"{path}: expected to write this file, but the file system said: {what}. Fix: {fix} "
            "(finished parts are kept and reused)"
        )
        self.path, self.errno = path, exc.errno
