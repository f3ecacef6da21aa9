"""Source and MD5 rules shared by the fetch stage and the workflow's config check."""

import pytest

from pipeline.sources import SourceError, is_md5_digest, is_remote, local_path, md5sum_line

pytestmark = pytest.mark.unit

DIGEST = "1d675b47d978889d74fa0da5fadfb00e"


@pytest.mark.parametrize(
    "spec,expected",
    [
        (DIGEST, True),
        (DIGEST.upper(), True),
        (DIGEST[:-1], False),
        (DIGEST + "0", False),
        ("g" + DIGEST[1:], False),
        (f" {DIGEST}", False),
        ("MD5SUMS", False),
        (f"data/{DIGEST}", False),
        ("", False),
    ],
)
def test_md5_digest_is_exactly_32_hex_digits(spec, expected):
    assert is_md5_digest(spec) is expected


def test_md5sum_lines_in_text_and_binary_mode():
    assert md5sum_line(f"{DIGEST}  ILSVRC2012_img_val.tar\n") == (DIGEST, "ILSVRC2012_img_val.tar")
    assert md5sum_line(f"{DIGEST.upper()} *dir/x.tar") == (DIGEST, "dir/x.tar")
    assert md5sum_line(f"{DIGEST} x.tar") is None  # md5sum writes two characters between digest and name
    assert md5sum_line("# comment") is None and md5sum_line("") is None


@pytest.mark.parametrize(
    "url,remote",
    [
        ("https://example.org/a.tar", True),
        ("http://example.org/a.tar", True),
        ("HTTPS://example.org/a.tar", True),
        ("file:///data/a.tar", False),
        ("file://localhost/data/a.tar", False),
        ("/data/a.tar", False),
        ("data/a.tar", False),
        ("ftp://example.org/a.tar", False),
    ],
)
def test_only_http_and_https_are_remote(url, remote):
    assert is_remote(url) is remote


@pytest.mark.parametrize(
    "url,path",
    [
        ("/data/a.tar", "/data/a.tar"),
        ("data/demo/a.tar", "data/demo/a.tar"),  # relative stays relative: the workflow matches it to rule outputs
        ("file:///data/a.tar", "/data/a.tar"),
        ("file://localhost/data/a.tar", "/data/a.tar"),  # RFC 8089: localhost is this machine
        ("file:///data/my%20archives/a.tar", "/data/my archives/a.tar"),
    ],
)
def test_local_path_of_paths_and_file_urls(url, path):
    assert local_path(url) == path


@pytest.mark.parametrize(
    "url,message",
    [
        ("file://fileserver/data/a.tar", "must name a local file"),
        ("https://example.org/a.tar", "a remote file"),
        ("ftp://example.org/a.tar", "unsupported URL scheme 'ftp'"),
    ],
)
def test_local_path_refuses_what_is_not_on_this_machine(url, message):
    with pytest.raises(SourceError, match=message):
        local_path(url)
