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
