"""What a long command says while it works: a progress bar on stderr (only on a terminal, never with --quiet), and
messages that never land on the bar's line."""

from __future__ import annotations

import sys
from typing import IO, Any

from tqdm import tqdm

_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


def shows_bars(file: IO[str] | None = None) -> bool:
    """Bars are drawn on a terminal's stderr unless --quiet: a log file or a pipe gets none."""
    f = file if file is not None else sys.stderr
    return not _quiet and bool(getattr(f, "isatty", lambda: False)())


def bar(total: int | None = None, desc: str = "", unit: str = "img", file: IO[str] | None = None, **kw: Any) -> tqdm:
    """A tqdm bar on stderr that clears itself when done."""
    return tqdm(total=total, desc=desc, unit=unit, file=file or sys.stderr, disable=not shows_bars(file),
                leave=False, dynamic_ncols=True, **kw)  # fmt: skip


def say(message: str, file: IO[str] | None = None) -> None:
    """Print a line to stderr (or `file`) above any bar that is drawn there."""
    tqdm.write(message, file=file or sys.stderr)
