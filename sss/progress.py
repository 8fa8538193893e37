"""Progress that follows the terminal: bars where stderr is one, a few log lines where it is not.

A bar redraws itself many times a second, which a terminal shows as one line but a file, a pipe
or a CI log keeps as hundreds. So :func:`progress` draws ``tqdm`` bars only when stderr is a
terminal; elsewhere an outer loop (edits, cells) logs one line as an item finishes, at most every
``every`` seconds, with done/total and the time left, and inner loops (an edit's optimisation
steps) say nothing. ``enabled=False`` (``--no-progress``) silences both.

Ground level: imports nothing else of sss.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, Optional, TypeVar

__all__ = ["LoggedProgress", "Quiet", "counter", "interactive", "progress"]

T = TypeVar("T")
logger = logging.getLogger("sss.progress")
EVERY_SECONDS = 5.0


def interactive() -> bool:
    """Whether stderr is a terminal (bars redraw in place there)."""
    stream = sys.stderr
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False


def progress(items: Iterable[T], *, desc: str, total: Optional[int] = None, enabled: bool = True,
             inner: bool = False, unit: str = "it", every: float = EVERY_SECONDS, **bar_options):
    """``items`` with progress shown as the terminal allows (see the module's docstring).

    ``inner``: a loop nested in another one's item (its bar vanishes when done; no log lines).
    Returns an iterable; a bar's ``set_postfix`` is available where a bar is drawn.
    """
    if not enabled:
        return Quiet(items)
    if interactive():
        from tqdm.auto import tqdm

        return tqdm(items, desc=desc, total=total, leave=not inner, unit=unit, **bar_options)
    if inner:
        return Quiet(items)
    return LoggedProgress(items, desc=desc, total=total, unit=unit, every=every)


def counter(*, desc: str, total: Optional[int], enabled: bool = True, initial: int = 0, unit: str = "it",
            every: float = EVERY_SECONDS, **bar_options):
    """Progress driven by ``update(n)`` rather than by iterating (a training loop's steps)."""
    if not enabled:
        return Quiet(())
    if interactive():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, **bar_options)
    return LoggedProgress((), desc=desc, total=total, unit=unit, every=every, initial=initial)


class Quiet:
    """An iterable that shows nothing (and accepts a bar's calls)."""

    def __init__(self, items: Iterable[T]):
        self.items = items

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def set_postfix_str(self, *args, **kwargs) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class LoggedProgress(Quiet):
    """One log line per finished item, at most every ``every`` seconds, and one at the end."""

    def __init__(self, items: Iterable[T], *, desc: str, total: Optional[int] = None, unit: str = "it",
                 every: float = EVERY_SECONDS, initial: int = 0):
        super().__init__(items)
        if total is None:
            try:
                total = len(items)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.desc, self.total, self.unit, self.every = desc, total, unit, every
        self.done = self.initial = initial
        self.started = self.last = time.monotonic()
        self.lines, self.reported = 0, initial

    def __iter__(self) -> Iterator[T]:
        for item in self.items:
            yield item
            self.update()
        self.close()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every and (self.total is None or self.done < self.total):
            self._line(now)

    def close(self) -> None:
        if self.done != self.reported:
            self._line(time.monotonic())

    def _line(self, now: float) -> None:
        self.last, self.reported = now, self.done
        self.lines += 1
        elapsed = now - self.started
        made = self.done - self.initial
        if self.total:
            left = (self.total - self.done) * elapsed / made if made else float("nan")
            logger.info("%s: %d/%d %s (%.0f%%), %s elapsed, about %s left", self.desc, self.done, self.total,
                        self.unit, 100 * self.done / self.total, _clock(elapsed), _clock(left))
        else:
            logger.info("%s: %d %s, %s elapsed", self.desc, self.done, self.unit, _clock(elapsed))


def _clock(seconds: float) -> str:
    if seconds != seconds:  # nan: nothing done yet
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"
