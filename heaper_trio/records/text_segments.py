"""A block's text handed over as the strings it is made of (issue 12 item 4).

The projection keeps a big text assembled per run of 64 top-level children (``crdt/
incremental.py``); a typed word re-assembles one run, and the other runs keep their very
``str`` objects. Joining those runs into one 8 MB string on every push, scanning it for NUL and
comparing it with the stored text to find what changed cost more than the rest of the push
(9% + 2.7% + ~3% of samples on SQLite, session 9). ``Segments`` hands storage the runs
instead: the changed range is found by skipping the runs both texts share by identity and
comparing characters only where they differ, slices copy only what they span, and the whole
text is joined only when a reader asks for it (``str()``, once, then kept).

``lazy_text`` makes a dataclass field of ``str`` accept ``Segments`` too: reading the field
gives the joined ``str`` (so every reader sees a plain text, as before), while ``raw_text``
gives what was stored, for the writers that know segments.
"""

from __future__ import annotations

import bisect
import itertools
import operator
from collections.abc import Callable
from typing import Any, TypeVar, cast, overload

_STEP = 1 << 16  # characters compared at a time while looking for the first difference


class Segments:
    """An immutable text as the concatenation of ``parts``; ``nul``: whether it holds a NUL
    (None: not known, found by a scan when asked)."""

    __slots__ = ("_joined", "_len", "_nul", "_starts", "parts")

    def __init__(self, parts: tuple[str, ...], nul: bool | None = None) -> None:
        self.parts = parts
        self._len = sum(map(len, parts))
        self._nul = nul
        self._starts: list[int] | None = None
        self._joined: str | None = None

    def __len__(self) -> int:
        return self._len

    def __str__(self) -> str:
        if self._joined is None:
            self._joined = "".join(self.parts)
        return self._joined

    def __repr__(self) -> str:
        return f"Segments({len(self.parts)} parts, {self._len} characters)"

    @property
    def nul(self) -> bool:
        if self._nul is None:
            self._nul = any("\x00" in p for p in self.parts)
        return self._nul

    def _part_starts(self) -> list[int]:
        if self._starts is None:
            self._starts = [0, *itertools.accumulate(map(len, self.parts))]
        return self._starts

    def _part_at(self, at: int) -> int:
        """The index of the part holding character ``at`` (0 <= at < len)."""
        return bisect.bisect_right(self._part_starts(), at) - 1

    @overload
    def __getitem__(self, key: int) -> str: ...
    @overload
    def __getitem__(self, key: slice) -> str: ...
    def __getitem__(self, key: int | slice) -> str:
        if self._joined is not None:
            return self._joined[key]
        if isinstance(key, int):
            at = key + self._len if key < 0 else key
            if not 0 <= at < self._len:
                raise IndexError(key)
            i = self._part_at(at)
            return self.parts[i][at - self._part_starts()[i]]
        start, stop, step = key.indices(self._len)
        if step != 1:
            return str(self)[key]
        if start >= stop:
            return ""
        starts, first = self._part_starts(), self._part_at(start)
        last = self._part_at(stop - 1)
        if first == last:
            return self.parts[first][start - starts[first] : stop - starts[first]]
        return "".join(
            (
                self.parts[first][start - starts[first] :],
                *self.parts[first + 1 : last],
                self.parts[last][: stop - starts[last]],
            )
        )

    def find(self, sub: str, start: int = 0, end: int | None = None) -> int:
        """``str.find``: a one-character ``sub`` is looked for part by part from ``start``."""
        if self._joined is not None or len(sub) != 1:
            return str(self).find(sub, start, end)
        start, end, _ = slice(start, end).indices(self._len)
        if start >= end:
            return -1
        starts = self._part_starts()
        for i in range(self._part_at(start), len(self.parts)):
            if starts[i] >= end:
                break
            lo = max(start - starts[i], 0)
            found = self.parts[i].find(sub, lo, end - starts[i])
            if found >= 0:
                return starts[i] + found
        return -1

    def rfind(self, sub: str, start: int = 0, end: int | None = None) -> int:
        """``str.rfind``: a one-character ``sub`` is looked for part by part back from ``end``."""
        if self._joined is not None or len(sub) != 1:
            return str(self).rfind(sub, start, end)
        start, end, _ = slice(start, end).indices(self._len)
        if start >= end:
            return -1
        starts = self._part_starts()
        for i in range(self._part_at(end - 1), -1, -1):
            if starts[i + 1] <= start:
                break
            lo = max(start - starts[i], 0)
            found = self.parts[i].rfind(sub, lo, end - starts[i])
            if found >= 0:
                return starts[i] + found
        return -1

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (str, Segments)):
            return NotImplemented
        if len(self) != len(other):
            return False
        return common_ends(self, other)[0] == len(self)

    def __hash__(self) -> int:
        return hash(str(self))


Text = str | Segments


def parts_of(text: Text) -> tuple[str, ...]:
    return text.parts if isinstance(text, Segments) else (text,)


def common_prefix(a: Text, b: Text, at: int = 0) -> int:
    """How many leading characters ``a`` and ``b`` share, knowing they share ``at``."""
    n = min(len(a), len(b))
    while at < n and a[at : at + _STEP] == b[at : at + _STEP]:
        at = min(n, at + _STEP)
    hi = min(n, at + _STEP)
    while at < hi:  # the first difference lies in [at, hi): halve the window
        mid = (at + hi + 1) // 2
        if a[at:mid] == b[at:mid]:
            at = mid
        else:
            hi = mid - 1
    return at


def common_suffix(a: Text, b: Text, limit: int, at: int = 0) -> int:
    """How many trailing characters ``a`` and ``b`` share, at most ``limit``, knowing they
    share ``at``."""
    la, lb = len(a), len(b)
    while (
        at < limit
        and a[la - min(limit, at + _STEP) : la - at] == b[lb - min(limit, at + _STEP) : lb - at]
    ):
        at = min(limit, at + _STEP)
    hi = min(limit, at + _STEP)
    while at < hi:
        mid = (at + hi + 1) // 2
        if a[la - mid : la - at] == b[lb - mid : lb - at]:
            at = mid
        else:
            hi = mid - 1
    return at


def _same_run(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    """How many leading parts ``a`` and ``b`` share by identity (compared in C)."""
    same = list(map(operator.is_, a, b))
    return same.index(False) if False in same else len(same)


def common_ends(a: Text, b: Text) -> tuple[int, int]:
    """(p, s): ``a`` and ``b`` share ``p`` leading and then ``s`` trailing characters. Parts
    the two hold at the same place from either end, by identity, are skipped unread, and
    the first that differ are compared on their own before anything wider is sliced."""
    pa, pb = parts_of(a), parts_of(b)
    i = _same_run(pa, pb)
    p = sum(map(len, pa[:i]))
    if i < min(len(pa), len(pb)):
        k = common_prefix(pa[i], pb[i])
        p += k
        if k == min(len(pa[i]), len(pb[i])):
            p = common_prefix(a, b, p)
    limit = min(len(a), len(b)) - p
    j = min(_same_run(pa[::-1], pb[::-1]), min(len(pa), len(pb)) - i)
    s = sum(map(len, pa[len(pa) - j :])) if j else 0
    while s > limit:  # a run the prefix reached too: give back whole parts
        j -= 1
        s -= len(pa[len(pa) - j - 1])
    if s < limit and j < min(len(pa), len(pb)):
        x, y = pa[len(pa) - j - 1], pb[len(pb) - j - 1]
        k = common_suffix(x, y, min(len(x), len(y), limit - s))
        s += k
        if k == min(len(x), len(y)) and s < limit:
            s = common_suffix(a, b, limit, s)
    return p, s


class _LazyText:
    """A data descriptor for a dataclass field of ``str`` that also takes ``Segments``
    (installed by ``lazy_text``): reading gives the text as one ``str``, joined at the first
    read (``Segments`` keeps it); ``raw_text`` gives what was set."""

    def __init__(self, name: str) -> None:
        self._key = f"_{name}_raw"

    def __get__(self, obj: object | None, owner: Any = None) -> Any:
        if obj is None:
            return self
        value = obj.__dict__[self._key]
        return value if isinstance(value, str) else str(value)

    def __set__(self, obj: object, value: Text) -> None:
        obj.__dict__[self._key] = value


C = TypeVar("C", bound=type)


def lazy_text(name: str) -> Callable[[C], C]:
    """A class decorator, put above ``@dataclass``: field ``name`` (typed ``str``) also takes
    ``Segments`` (pass them through ``lazy``, which types them as the ``str`` a read gives)."""

    def install(cls: C) -> C:
        setattr(cls, name, _LazyText(name))
        return cls

    return install


def lazy(text: Text) -> str:
    """``text`` for a ``lazy_text`` field: typed as the ``str`` reading the field gives."""
    return cast(str, text)


def raw_text(obj: object, name: str = "text") -> Text:
    """What a ``lazy_text`` field of ``obj`` was set to: a ``str`` or ``Segments``."""
    value = obj.__dict__[f"_{name}_raw"]
    assert isinstance(value, (str, Segments))
    return value
