"""Safe extraction of NIH image archives (``images_NNN.tar.gz``): every member is checked
before anything is written, and only regular files land, renamed to ``images/<name>``.

Refused (:class:`UnsafeArchiveError`, nothing extracted): absolute paths, ``..`` components,
symbolic and hard links, devices and FIFOs, other member types, and two members that would
extract to the same path.
"""

from __future__ import annotations

import copy
import re
import tarfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath

_IMAGES_NNN_RE = re.compile(r"^images_\d{3}$")


class UnsafeArchiveError(ValueError):
    """An archive member that must not be extracted: absolute path, ``..`` component, symbolic
    or hard link, device or FIFO, or a name clash. Nothing of the archive was extracted."""

    def __init__(self, archive: str, member: str, reason: str) -> None:
        super().__init__(f"unsafe member {member!r} in archive {archive!r}: {reason}; nothing was extracted")
        self.archive = archive
        self.member = member
        self.reason = reason


def plan_members(members: Sequence[tarfile.TarInfo], archive: str) -> list[tarfile.TarInfo]:
    """Check every member, then return copies of the regular files renamed to
    ``images/<name>`` (a leading ``images_NNN/`` and/or ``images/`` is dropped).

    Raises :class:`UnsafeArchiveError` for the first member that is not safe to extract.
    """
    plan: list[tarfile.TarInfo] = []
    seen: dict[str, str] = {}
    for member in members:
        raw = member.name
        text = raw.replace("\\", "/")
        if not raw or "\x00" in raw:
            raise UnsafeArchiveError(archive, raw, "empty or invalid name")
        if text.startswith("/") or PurePosixPath(text).is_absolute() or PureWindowsPath(raw).drive:
            raise UnsafeArchiveError(archive, raw, "absolute path")
        parts = [p for p in text.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise UnsafeArchiveError(archive, raw, "'..' path component")
        if member.issym():
            raise UnsafeArchiveError(archive, raw, f"symbolic link (to {member.linkname!r})")
        if member.islnk():
            raise UnsafeArchiveError(archive, raw, f"hard link (to {member.linkname!r})")
        if member.ischr() or member.isblk() or member.isfifo():
            raise UnsafeArchiveError(archive, raw, "device or FIFO")
        if member.isdir():
            continue  # folders are created as needed
        if not member.isreg():
            raise UnsafeArchiveError(archive, raw, f"unsupported member type {member.type!r}")
        if not parts:
            raise UnsafeArchiveError(archive, raw, "file without a name")
        if len(parts) > 1 and _IMAGES_NNN_RE.match(parts[0]):
            parts = parts[1:]
        if len(parts) > 1 and parts[0] == "images":
            parts = parts[1:]
        name = "/".join(["images", *parts])
        if name in seen:
            raise UnsafeArchiveError(archive, raw, f"extracts to the same path as {seen[name]!r} ({name})")
        seen[name] = raw
        renamed = copy.copy(member)
        renamed.name = name
        renamed.mode = 0o644
        renamed.uid = renamed.gid = 0
        renamed.uname = renamed.gname = ""
        plan.append(renamed)
    return plan


def safe_extract(archive: Path, dest: Path, label: str) -> int:
    """Extract ``archive`` into the empty folder ``dest`` after checking every member."""
    with tarfile.open(archive, mode="r:*") as tar:
        plan = plan_members(tar.getmembers(), label)
        if not plan:
            raise ValueError(f"archive {label!r} contains no files")
        (dest / "images").mkdir(parents=True, exist_ok=True)
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4+ / 3.12+
            tar.extractall(dest, members=plan, filter="data")
        else:  # pragma: no cover - old Python; every member was checked above
            tar.extractall(dest, members=plan)
    return len(plan)
