"""Where an archive comes from and how its MD5 is given: the rules the fetch stage and the workflow share.

A source is an https:// or http:// URL (downloaded), or a local path or
file:// URL (read in place). A file URL names a file on this machine: its
host is empty or `localhost` (RFC 8089), so file:///data/x.tar and
file://localhost/data/x.tar are the same file, and %-escapes are decoded.
An MD5 is a 32-hex digest or an md5sum-format file, given like a local source.

The workflow's config check and its fetch rule import these, so a source the
check accepts is one the fetch stage can read. Standard library only: the
Snakefile imports this module on every run.
"""

from __future__ import annotations

import re
import urllib.parse
import urllib.request

from pipeline.errors import PipelineError

# The official file names; config keys dataset.archives.<key> and the fetch CLI's --<key>.
ARCHIVES = {
    "train": "ILSVRC2012_img_train.tar",
    "val": "ILSVRC2012_img_val.tar",
    "devkit": "ILSVRC2012_devkit_t12.tar.gz",
}
# ILSVRC-2012's image counts (Russakovsky et al., IJCV 2015, Table 2; the paper's section 2:
# "roughly 1.2 million training images, 50,000 validation images").
ILSVRC_TRAIN_IMAGES = 1_281_167
ILSVRC_VAL_IMAGES = 50_000
REMOTE_SCHEMES = ("http", "https")
_DIGEST = re.compile(r"[0-9a-fA-F]{32}")
_MD5SUM_LINE = re.compile(r"([0-9a-fA-F]{32}) [ *](.+)")


class SourceError(PipelineError, ValueError):
    """A source or MD5 given in a form the pipeline cannot read."""


def is_md5_digest(spec: str) -> bool:
    """True for a 32-hex digest (either case); anything else names an md5sum file."""
    return bool(_DIGEST.fullmatch(spec))


def md5sum_line(line: str) -> tuple[str, str] | None:
    """(lower-case digest, file name as written) of one md5sum-format line, or None."""
    m = _MD5SUM_LINE.fullmatch(line.strip())
    return (m.group(1).lower(), m.group(2)) if m else None


def is_remote(url: str) -> bool:
    return urllib.parse.urlsplit(url).scheme in REMOTE_SCHEMES


def local_path(url: str) -> str:
    """The file a local path or file:// URL names, relative paths left relative.

    Relative stays relative because the workflow matches it against the demo
    rule's outputs; the fetch stage makes it absolute itself."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise SourceError(f"{url}: file:// URLs must name a local file (file:///path or file://localhost/path)")
        return urllib.request.url2pathname(parts.path)
    if parts.scheme in REMOTE_SCHEMES:
        raise SourceError(f"{url}: a remote file where a local path or file:// URL is needed")
    if parts.scheme and len(parts.scheme) > 1:  # one letter: a Windows drive
        raise SourceError(f"{url}: unsupported URL scheme {parts.scheme!r}; use https://, http://, file:// or a path")
    return url
