"""Download and installed size of a torch build with everything it pulls in, without installing it.

    pip install --dry-run --ignore-installed --only-binary :all: --use-feature=fast-deps \
        --report cuda.json --index-url https://pypi.org/simple torch==2.13.0
    python bench/torch_build_size.py cuda.json

pip's report names every wheel the install would take (PyPI's torch for Linux x86_64
is the CUDA build: its nvidia-* packages come with it). For each wheel this reads only
the zip's central directory, with HTTP range requests, and sums the sizes of the files
it would unpack: the installed size, to within the few kB of pip's own metadata, of a
multi-GB environment measured with a few MB of traffic. Figures: bench/RESULTS-install.md.
"""

from __future__ import annotations

import json
import sys
import urllib.request
import zipfile


class RangeFile:
    """A read-only, seekable view of a remote file: each read is one HTTP range request."""

    def __init__(self, url: str):
        self.url, self.pos = url, 0
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=60) as r:
            self.size = int(r.headers["Content-Length"])

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = {0: 0, 1: self.pos, 2: self.size}[whence] + pos
        return self.pos

    def tell(self) -> int:
        return self.pos

    def seekable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self.pos + n)
        if end <= self.pos:
            return b""
        req = urllib.request.Request(self.url, headers={"Range": f"bytes={self.pos}-{end - 1}"})
        with urllib.request.urlopen(req, timeout=60) as r:
            data = r.read()
        self.pos += len(data)
        return data


def wheel_sizes(url: str) -> tuple[int, int]:
    """(download bytes, unpacked bytes) of one wheel."""
    f = RangeFile(url)
    with zipfile.ZipFile(f) as z:  # reads the end record and the central directory only
        return f.size, sum(info.file_size for info in z.infolist())


def main(report: str) -> None:
    rows = []
    for item in json.load(open(report))["install"]:
        meta = item["metadata"]
        rows.append((meta["name"], meta["version"], *wheel_sizes(item["download_info"]["url"])))
    rows.sort(key=lambda r: -r[3])
    print("| package | version | download MB | installed MB |\n| --- | --- | ---: | ---: |")
    for name, version, down, unpacked in rows:
        print(f"| {name} | {version} | {down / 1e6:,.1f} | {unpacked / 1e6:,.1f} |")
    print(f"| all {len(rows)} | | {sum(r[2] for r in rows) / 1e6:,.0f} | {sum(r[3] for r in rows) / 1e6:,.0f} |")


if __name__ == "__main__":
    main(sys.argv[1])
