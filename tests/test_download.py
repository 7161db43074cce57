"""Downloads: verified before anything lands, never over the network in tests (file:// URLs)."""

import hashlib
import zipfile

import pytest

from robustag.datasets import DATASETS
from robustag.download import download_dataset
from robustag.errors import RobustagError

CONTENT = b"userID\tartistID\ttagID\ttimestamp\r\n2\t52\t13\t1238536800000\r\n"


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path.as_uri()


def test_download_verifies_and_unpacks(tmp_path):
    filename = DATASETS["lastfm"].filename
    url = _zip(tmp_path / "a.zip", {f"top/{filename}": CONTENT, "top/tags.dat": b"tagID\ttagValue\n"})
    digest = hashlib.sha256(CONTENT.replace(b"\r\n", b"\n")).hexdigest()
    path = download_dataset("lastfm", tmp_path / "data", sha256=digest, url=url)
    assert path == tmp_path / "data" / "hetrec2011-lastfm-2k" / filename
    assert path.read_bytes() == CONTENT
    assert (path.parent / "tags.dat").is_file()


def test_checksum_mismatch_writes_nothing(tmp_path):
    url = _zip(tmp_path / "a.zip", {DATASETS["lastfm"].filename: CONTENT})
    with pytest.raises(RobustagError, match="checksum mismatch.*nothing was written"):
        download_dataset("lastfm", tmp_path / "data", url=url)  # the pinned checksum of the real file
    assert not (tmp_path / "data").exists()


def test_an_html_page_instead_of_a_zip_is_refused(tmp_path):
    page = tmp_path / "page.zip"
    page.write_text("<html><body>Not found</body></html>")
    with pytest.raises(RobustagError, match="did not return a zip"):
        download_dataset("lastfm", tmp_path / "data", url=page.as_uri())


def test_unpinned_dataset_asks_for_a_checksum(tmp_path):
    with pytest.raises(RobustagError, match="no pinned checksum.*--sha256"):
        download_dataset("delicious", tmp_path)


def test_unreachable_url_is_a_clear_error(tmp_path):
    with pytest.raises(RobustagError, match="download failed"):
        download_dataset("lastfm", tmp_path, url=(tmp_path / "missing.zip").as_uri())
