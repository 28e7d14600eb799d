"""Numbers for people: the duration and plural formatters everything shares."""

from __future__ import annotations


def duration(seconds: float | None) -> str:
    """``"0.4 s"``, ``"12 s"``, ``"3 min 05 s"``, ``"2 h 04 min"``; "-" if unknown."""
    if seconds is None:
        return "-"
    if seconds < 9.95:
        return f"{max(0.0, seconds):.1f} s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def plural(n: int, word: str) -> str:
    """``"1 row"``, ``"2 rows"``, ``"1,437 images"``: ``n`` and ``word`` + "s"."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"
