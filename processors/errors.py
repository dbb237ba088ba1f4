"""Exceptions raised by the CSV and image jobs: one tree under batchcore's ``BatchcoreError``, each
class also under a familiar built-in base, so a plain ``except ValueError`` keeps working.

::

    BatchcoreError(Exception)             batchcore.errors
    ├── UsageError(ValueError)            a job that must not start; nothing read or written yet
    │   ├── UnknownColumnError(KeyError)  a column the CSV does not have (lists those it has)
    │   ├── FilterSpecError               a filter spec that cannot run (unknown name, bad value)
    │   ├── MissingExtraError(ImportError) a URL whose filesystem is not installed (names the extra)
    │   ├── ImagesUsageError              no images, two jobs writing one file, a path leaving OUT
    │   └── NotCsvError                   an input that is no CSV: a zip archive, a Parquet file
    ├── DataError(ValueError)             input whose contents cannot give a result
    │   ├── CsvFormatError                bad CSV, located by path, line and column
    │   ├── CompressedDataError           a truncated or corrupt gzip/bz2/xz/zstd stream
    │   └── ImageDecodeError              an image that cannot be decoded (file and reason)
    ├── FilterError(RuntimeError)         a filter raised on an image (image and step named)
    └── ImageWriteError(OSError)          an output that could not be written (nothing left)

The CLI maps ``UsageError`` to exit code 2 and every other ``BatchcoreError`` to 1
(``batchcore.processors.cli.errors``). Errors with arguments define ``__reduce__`` so they cross
process boundaries intact.
"""

from __future__ import annotations

from typing import Any

from batchcore.errors import BatchcoreError

__all__ = [
    "CompressedDataError",
    "CsvFormatError",
    "DataError",
    "FilterError",
    "FilterSpecError",
    "ImageDecodeError",
    "ImageWriteError",
    "ImagesUsageError",
    "MissingExtraError",
    "NotCsvError",
    "UnknownColumnError",
    "UsageError",
]


class UsageError(BatchcoreError, ValueError):
    """A job that must not start (bad option, spec or path); nothing was read or written yet."""


class MissingExtraError(UsageError, ImportError):
    """A URL's filesystem is not installed; the message names the extra that brings it."""


class UnknownColumnError(UsageError, KeyError):
    """A requested column is not in the file; the message lists the ones that are."""

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0])


class FilterSpecError(UsageError):
    """A filter spec that cannot run: unknown filter or parameter, a value of the wrong type."""


class ImagesUsageError(UsageError):
    """An image run that must not start: no images, two jobs writing one file, a path leaving
    OUT..."""


class NotCsvError(UsageError):
    """An input that is commonly mistaken for CSV but is not (a zip archive, a Parquet file): the
    message says what it is and what to do; ``path`` is added by whoever knows it."""

    def __init__(self, reason: str, path: str | None = None) -> None:
        super().__init__(f"{path}: {reason}" if path is not None else reason)
        self.reason = reason
        self.path = path

    def with_path(self, path: str) -> NotCsvError:
        """The same error, naming ``path``."""
        return type(self)(self.reason, path)

    def __reduce__(self) -> Any:
        return (type(self), (self.reason, self.path))


class DataError(BatchcoreError, ValueError):
    """The input's contents cannot give a result: a non-numeric value, a malformed CSV..."""


class CsvFormatError(DataError):
    """Bad CSV input, located: ``path``, 1-based ``line`` (physical) and ``column`` when known."""

    def __init__(self, path: str, line: int | None, reason: str, column: str | None = None) -> None:
        self.path = path
        self.line = line
        self.column = column
        self.reason = reason
        where = f"{path}:{line}" if line is not None else path
        what = f"column {column!r}: {reason}" if column is not None else reason
        super().__init__(f"{where}: {what}")

    def __reduce__(self) -> Any:
        return (type(self), (self.path, self.line, self.reason, self.column))


class CompressedDataError(DataError):
    """A compressed input that cannot be read to its end (truncated, corrupt): ``kind`` is the
    format ("gzip", "bz2", "xz", "zstd"), ``offset`` the uncompressed bytes read before it failed,
    ``path`` is added by whoever knows it. Never replaced by silently short data."""

    def __init__(self, kind: str, reason: str, offset: int, path: str | None = None) -> None:
        self.kind = kind
        self.reason = reason
        self.offset = offset
        self.path = path
        what = f"{kind}-compressed data {reason} (after {offset:,} uncompressed bytes)"
        super().__init__(f"{path}: {what}" if path is not None else what)

    def with_path(self, path: str) -> CompressedDataError:
        """The same error, naming ``path``."""
        return type(self)(self.kind, self.reason, self.offset, path)

    def __reduce__(self) -> Any:
        return (type(self), (self.kind, self.reason, self.offset, self.path))


class ImageDecodeError(DataError):
    """An input that cannot be decoded (corrupt, truncated, empty, not an image, over the pixel
    limit); the message names the file and gives Pillow's reason."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self) -> Any:
        return (type(self), (self.path, self.reason))


class FilterError(BatchcoreError, RuntimeError):
    """A filter raised while running on an image; the message names the image and the step."""

    def __init__(self, source: str, step: str, reason: str) -> None:
        super().__init__(f"{source}: filter {step!r} failed: {reason}")
        self.source = source
        self.step = step
        self.reason = reason

    def __reduce__(self) -> Any:
        return (type(self), (self.source, self.step, self.reason))


class ImageWriteError(BatchcoreError, OSError):
    """An output that could not be written; nothing is left at its path."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: cannot write: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self) -> Any:
        return (type(self), (self.path, self.reason))
