"""The mount table of this node (``/proc/self/mountinfo``), parsed into frozen values: which
filesystem is mounted where, from which source, of which type."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

MOUNTINFO = "/proc/self/mountinfo"


@attrs.frozen
class Mount:
    """One line of /proc/self/mountinfo."""

    mount_id: int
    parent_id: int
    dev: str  # "major:minor"
    root: str
    mountpoint: str
    options: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\ooo`` octal."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        c = field[i]
        code = field[i + 1 : i + 4]
        if c == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> tuple[Mount, ...]:
    """Parse /proc/self/mountinfo text; malformed lines are skipped."""
    mounts: list[Mount] = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            mounts.append(
                Mount(
                    mount_id=int(fields[0]),
                    parent_id=int(fields[1]),
                    dev=fields[2],
                    root=_unescape(fields[3]),
                    mountpoint=_unescape(fields[4]),
                    options=fields[5],
                    fstype=fields[sep + 1],
                    source=_unescape(fields[sep + 2]),
                )
            )
        except (ValueError, IndexError):
            continue
    return tuple(mounts)


def read_mounts(path: str = MOUNTINFO) -> tuple[Mount, ...]:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            return parse_mountinfo(fh.read())
    except OSError:
        return ()


def mount_at(mountpoint: str, mounts: Sequence[Mount]) -> Mount | None:
    """The mount whose mount point is exactly ``mountpoint`` (the last one: it is on top)."""
    found = None
    for m in mounts:
        if m.mountpoint == mountpoint:
            found = m
    return found
