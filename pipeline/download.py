"""HTTP downloads that survive dropped connections: resume with Range requests, hash while receiving.

The fetch stage's only network code. urllib from the standard library is
enough (Range requests and one header), so there is no extra dependency to
pin. A token comes from an environment variable whose *name* is the setting:
the name may travel on a command line that tracking records, the value never
does, is never printed, and is not forwarded when a redirect leaves the host.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from pipeline.errors import PipelineError

CHUNK = 1 << 20
RETRYABLE_HTTP = {408, 429, 500, 502, 503, 504}


class DownloadError(PipelineError, RuntimeError):
    """A download that cannot complete; `status` is the HTTP status when the server refused it."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def auth_header(env_name: str | None) -> tuple[str, str] | None:
    """The header from the environment variable `env_name`; the value is never echoed."""
    if not env_name:
        return None
    value = os.environ.get(env_name, "")
    if not value.strip():
        raise DownloadError(
            f"environment variable {env_name} is unset or empty; export it with a token or 'Header-Name: value'"
        )
    if ":" in value:
        key, _, val = value.partition(":")
        key = key.strip()
        if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", key):
            raise DownloadError(
                f"environment variable {env_name}: the text before ':' is not a valid "
                "HTTP header name; use 'Header-Name: value' or a bare token"
            )
        return key, val.strip()
    return "Authorization", f"Bearer {value.strip()}"


class _SameHostRedirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects; carry the auth header only while the host stays the same."""

    def __init__(self, header: tuple[str, str] | None):
        self.header = header

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if (
            new is not None
            and self.header
            and urllib.parse.urlsplit(newurl).netloc == urllib.parse.urlsplit(req.full_url).netloc
        ):
            new.add_unredirected_header(*self.header)
        return new


class _ShortRead(Exception):
    pass


def _content_range_start(headers) -> int | None:
    m = re.match(r"bytes (\d+)-", (headers.get("Content-Range") or "").strip())
    return int(m.group(1)) if m else None


def _content_range_total(value: str | None) -> int | None:
    m = re.fullmatch(r"bytes (?:\d+-\d+|\*)/(\d+)", (value or "").strip())
    return int(m.group(1)) if m else None


def _receive(resp, part: Path, mode: str, h, bar) -> int:
    """Append the response body to `part`, hashing it; return the bytes received."""
    got = 0
    try:
        f = open(part, mode)
    except OSError as e:
        raise DownloadError(f"{part}: cannot write the download ({e})") from None
    with f, bar:
        while chunk := resp.read(CHUNK):
            try:
                f.write(chunk)
            except OSError as e:
                raise DownloadError(f"{part}: cannot write the download ({e})") from None
            h.update(chunk)
            got += len(chunk)
            bar.update(len(chunk))
    return got


@dataclass
class _Received:
    """The bytes of the .part file so far and their running md5, shared by the attempts."""

    size: int = 0
    md5: hashlib._Hash = field(default_factory=hashlib.md5)

    def restart(self) -> None:
        self.size, self.md5 = 0, hashlib.md5()


def download(
    url: str,
    dest: Path,
    auth: tuple[str, str] | None = None,
    retries: int = 5,
    backoff: float = 2.0,
    timeout: float = 60.0,
) -> tuple[str, int]:
    """Download `url` to `dest`.part, resuming what is there; return (md5, bytes).

    The caller verifies the md5 and renames the .part file; a dropped
    connection is resumed from the bytes already written (HTTP Range).
    """
    part = dest.with_name(dest.name + ".part")
    got = _resume(url, dest, part)
    opener = urllib.request.build_opener(_SameHostRedirect(auth))
    failures = 0
    while True:
        start = got.size
        try:
            _get(opener, url, auth, part, got, timeout, dest.name)
            return got.md5.hexdigest(), got.size
        except urllib.error.HTTPError as e:
            if e.code == 416 and got.size and _content_range_total(e.headers.get("Content-Range")) == got.size:
                return got.md5.hexdigest(), got.size  # the .part file was already complete
            if e.code == 416:
                part.unlink(missing_ok=True)
                got.restart()
            elif e.code not in RETRYABLE_HTTP:
                raise DownloadError(f"{url}: HTTP {e.code} {e.reason}", status=e.code) from None
            error = e
        except (OSError, http.client.HTTPException, _ShortRead) as e:  # URLError is an OSError
            error = e
        if part.exists():
            got.size = part.stat().st_size  # bytes flushed before the drop
        failures = 0 if got.size > start else failures + 1
        if failures > retries:
            raise DownloadError(
                f"{url}: download failed {failures} times in a row ({error}); "
                f"{got.size} bytes kept in {part}: rerun to resume"
            )
        delay = backoff * max(failures, 1) if failures else 0.0
        print(
            f"{dest.name}: {error}; resuming at byte {got.size}" + (f" in {delay:.0f} s" if delay else ""),
            file=sys.stderr,
        )
        time.sleep(delay)


def _resume(url: str, dest: Path, part: Path) -> _Received:
    """What an earlier run left in `part` for this URL, hashed; another URL's bytes are dropped."""
    source = part.with_name(part.name + ".url")  # where the .part's bytes came from
    if part.exists() and source.exists() and source.read_text().strip() != url:
        # another URL's bytes (the source changed since): never splice two files
        print(f"{dest.name}: discarding {part.name}, begun from {source.read_text().strip()}", file=sys.stderr)
        part.unlink()
    source.write_text(url + "\n")
    got = _Received(part.stat().st_size if part.exists() else 0)
    if got.size:
        with open(part, "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                got.md5.update(chunk)
        print(f"{dest.name}: resuming at byte {got.size}", file=sys.stderr)
    return got


def _get(opener, url: str, auth: tuple[str, str] | None, part: Path, got: _Received, timeout: float, name: str) -> None:
    """One GET from byte got.size on, appended to `part`; a drop raises with `got` as far as it came."""
    req = urllib.request.Request(url)
    if auth:
        req.add_unredirected_header(*auth)
    if got.size:
        req.add_header("Range", f"bytes={got.size}-")
    with opener.open(req, timeout=timeout) as resp:
        if got.size and (resp.status != 206 or _content_range_start(resp.headers) != got.size):
            got.restart()  # the server ignored the Range: start over
        length = resp.headers.get("Content-Length")
        expect = int(length) if length is not None else None
        total = got.size + expect if expect is not None else None
        received = _receive(
            resp,
            part,
            "ab" if got.size else "wb",
            got.md5,
            tqdm(
                total=total,
                initial=got.size,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=name,
                file=sys.stderr,
                disable=None,
            ),
        )
        got.size += received
        # http.client returns a short body without raising when the peer closes early.
        if expect is not None and received < expect:
            raise _ShortRead(f"connection closed after {received} of {expect} bytes")
