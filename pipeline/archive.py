"""Reading ILSVRC archives safely and in place.

Every tar member the project reads or unpacks goes through `check_member`,
which refuses absolute paths, `..` components and links (the same rules as
Python's tarfile 'data' filter, applied to reading too, since we read members
by name and offset rather than extracting them).
"""
from __future__ import annotations

import posixpath
import tarfile


class UnsafeArchiveError(ValueError):
    """A tar member would escape the archive's folder or is not a plain file."""


def check_member(member: tarfile.TarInfo, archive: str) -> None:
    name = member.name
    norm = posixpath.normpath(name)
    if name.startswith("/") or posixpath.isabs(norm):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; refusing to read this archive")
    if norm == ".." or norm.startswith("../") or "/../" in f"/{name}/":
        raise UnsafeArchiveError(f"{archive}: member {name!r} contains '..'; refusing to read this archive")
    if member.issym() or member.islnk():
        target = member.linkname
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(norm), target))
        if posixpath.isabs(target) or resolved == ".." or resolved.startswith("../"):
            raise UnsafeArchiveError(
                f"{archive}: member {name!r} links to {target!r} outside the archive; refusing to read this archive")
    if member.isdev():
        raise UnsafeArchiveError(f"{archive}: member {name!r} is a device file; refusing to read this archive")
