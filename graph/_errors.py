"""The exception hierarchy of the engine.

::

    CrunchError
    ├── BundleError        a bundle was refused; ``problems`` lists every reason
    ├── NotFoundError      an id that the store does not hold
    └── ValidationError    a value that breaks a rule of the domain
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BundleError", "CrunchError", "NotFoundError", "Problem", "ValidationError"]


class CrunchError(Exception):
    """Base class of every error the engine raises on purpose."""


@dataclass(frozen=True, order=True)
class Problem:
    """One reason a bundle is refused: ``file:line: reason`` (line 1 is the header)."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


class BundleError(CrunchError):
    """A bundle was refused. Nothing was written."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems)
        head = "; ".join(str(p) for p in self.problems[:5])
        more = f" (and {len(self.problems) - 5} more)" if len(self.problems) > 5 else ""
        super().__init__(f"bundle refused, {len(self.problems)} problem(s): {head}{more}")


class NotFoundError(CrunchError, KeyError):
    """The store holds no such id."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ValidationError(CrunchError, ValueError):
    """A value breaks a rule of the domain."""
