"""One small error hierarchy for everything a user can get wrong.

Every error a user can cause is a :class:`SpnasError`; the command line prints it as
``file:line:col: error: message`` (plus the source line and a caret when there is a
location) and exits non-zero, never with a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """A location in a source file (1-based line and column)."""

    file: str
    line: int
    column: int
    end_line: int | None = None
    end_column: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class SpnasError(Exception):
    """Base class of user-facing errors. ``exit_code`` is what the CLI returns."""

    exit_code = 1

    def __init__(self, message: str, span: Span | None = None, source: str | None = None):
        super().__init__(message)
        self.message = message
        self.span = span
        self.source = source

    def render(self) -> str:
        """``file:line:col: error: message`` and, when the source is known, a caret excerpt."""
        where = f"{self.span}: " if self.span else ""
        text = f"{where}error: {self.message}"
        excerpt = _caret_excerpt(self.source, self.span)
        return f"{text}\n{excerpt}" if excerpt else text

    def __str__(self) -> str:
        return f"{self.span}: {self.message}" if self.span else self.message


class SpnasSyntaxError(SpnasError):
    """The text is not in the language (the grammar rejected it)."""

    exit_code = 2


class SpnasValidationError(SpnasError):
    """The text parses, but a semantic rule is broken (unknown op, bad value...)."""

    exit_code = 2


class SpnasErrors(SpnasError):
    """Several located errors found together, reported sorted by position."""

    exit_code = 2

    def __init__(self, errors: list[SpnasError]):
        errors = sorted(errors, key=lambda e: (e.span.line, e.span.column) if e.span else (0, 0))
        super().__init__(errors[0].message, errors[0].span, errors[0].source)
        self.errors = errors

    def render(self) -> str:
        return "\n".join(e.render() for e in self.errors)

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


class LoweringError(SpnasError):
    """A valid space that a compiler pass cannot lower (e.g. a non-nested candidate set)."""

    exit_code = 2


class TargetError(SpnasError):
    """Unknown target, corrupt lookup table, or a space the target cannot price."""


class DataError(SpnasError):
    """Missing or malformed data set."""


class MeasurementError(SpnasError):
    """Malformed or mismatched measurement file (whole-network latencies)."""

    exit_code = 2


class CheckpointError(SpnasError):
    """Missing, corrupt or mismatched checkpoint / weights."""


class BuildError(SpnasError):
    """An export backend failed or its output disagrees with PyTorch."""


class UsageError(SpnasError):
    """Bad command-line usage (wrong file kind, conflicting options...)."""

    exit_code = 2


class OutputError(SpnasError):
    """An output file cannot be written (its folder is a file, it is a folder, no permission, disk full)."""


def _caret_excerpt(source: str | None, span: Span | None) -> str:
    if not source or not span or span.line < 1:
        return ""
    lines = source.splitlines()
    if span.line > len(lines):
        return ""
    line = lines[span.line - 1].expandtabs(1)
    column = max(span.column - 1, 0)
    if len(line) > _EXCERPT_WIDTH:  # a 5,000-digit number: show a window around the caret
        start = max(0, min(column - _EXCERPT_WIDTH // 4, len(line) - _EXCERPT_WIDTH))
        end = start + _EXCERPT_WIDTH
        head, tail = ("..." if start else ""), ("..." if end < len(line) else "")
        line = head + line[start:end] + tail
        column = column - start + len(head)
    return f"    {line}\n    {' ' * column}^"


_EXCERPT_WIDTH = 100  # characters of a long source line shown in an error
