"""Issue 25 items 8 and 10: list files and identities say what is wrong, early and clearly.

A list file may start with a UTF-8 byte-order mark, and name paths with spaces (quoted, or
tab-separated); a pid or camid that does not fit a 64-bit integer is refused naming the image.
"""

from pathlib import Path

import pytest
from PIL import Image

from pmm_model.apps.extract import read_image_list
from pmm_model.data.images import ImageDataset


@pytest.fixture
def folder(tmp_path):
    for name in ("a.jpg", "my photo.jpg", "two  spaces.jpg"):
        Image.new("RGB", (8, 16)).save(tmp_path / name)
    return tmp_path


@pytest.mark.parametrize(
    "text",
    [
        "\ufeffa.jpg 1 0\n\"my photo.jpg\" 2 1\n'two  spaces.jpg' 3 0\n",
        "a.jpg\t1\t0\nmy photo.jpg\t2\t1\ntwo  spaces.jpg\t3\t0\n",
        "\ufeffa.jpg\t1\t0\r\n# a comment\r\nmy photo.jpg\t2\t1\r\ntwo  spaces.jpg\t3\t0\r\n",
    ],
    ids=["quoted, BOM", "tabs", "tabs, BOM, CRLF, comment"],
)
def test_a_list_file_names_paths_with_spaces(folder, text):
    (folder / "list.txt").write_text(text, encoding="utf-8")
    entries = read_image_list(folder / "list.txt")
    assert entries == [
        (str(folder / "a.jpg"), (1, 0)),
        (str(folder / "my photo.jpg"), (2, 1)),
        (str(folder / "two  spaces.jpg"), (3, 0)),
    ]
    assert all(Path(path).is_file() for path, _ in entries)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("my photo.jpg 2 1", "quote a path with spaces, or separate fields with tabs"),
        ('"my photo.jpg 2 1', "No closing quotation"),
    ],
)
def test_an_unquoted_or_unclosed_path_with_spaces_is_one_line(folder, line, message):
    (folder / "list.txt").write_text(line + "\n")
    with pytest.raises(ValueError, match=message) as err:
        read_image_list(folder / "list.txt")
    assert str(err.value).startswith(f"{folder / 'list.txt'}:1: ") and "\n" not in str(err.value)


@pytest.mark.parametrize("pid, camid", [(10**19, 0), (0, 10**20), (-(2**63) - 1, 0)])
def test_a_pid_or_camid_beyond_64_bits_names_the_image(folder, pid, camid):
    with pytest.raises(ValueError, match=r"image .*a\.jpg: pid .* does not fit a 64-bit integer"):
        ImageDataset([(str(folder / "a.jpg"), pid, camid)])
