"""List-file parsing and path-traversal rejection."""

import pytest

from clsact.data.listfile import Sample, parse_lines, read_list, safe_relpath
from clsact.errors import DataError


def test_parses_paths_labels_comments_and_spaces():
    lines = ["# header", "", "train/n01/a.JPEG 0", "  train/n02/b c.JPEG   7  ", "./x/y.jpg 3"]
    assert parse_lines(lines, "l.txt") == [
        Sample("train/n01/a.JPEG", 0), Sample("train/n02/b c.JPEG", 7), Sample("x/y.jpg", 3)]


@pytest.mark.parametrize("path", ["/etc/passwd", "../secret.jpg", "a/../../b.jpg", "..",
                                  "C:/x.jpg", "a\\..\\..\\b.jpg", "."])
def test_rejects_paths_escaping_the_root(path):
    assert safe_relpath(path) is None
    with pytest.raises(DataError, match="l.txt:1: path .* leaves the data"):
        parse_lines([f"{path} 1"], "l.txt")


def test_keeps_inner_dotdot_that_stays_inside():
    assert safe_relpath("a/b/../c.jpg") == "a/c.jpg"


@pytest.mark.parametrize("line, message", [
    ("onlypath.jpg", "expected 'relative/path.JPEG label'"),
    ("a.jpg cat", "label 'cat' is not an integer"),
    ("a.jpg -1", "label -1 is negative"),
])
def test_bad_lines_name_file_and_line(line, message):
    with pytest.raises(DataError, match=f"l.txt:2: {message}"):
        parse_lines(["ok.jpg 0", line], "l.txt")


def test_empty_list_is_an_error():
    with pytest.raises(DataError, match="no samples"):
        parse_lines(["", "# nothing"], "l.txt")


def test_missing_list_file_names_the_key(tmp_path):
    with pytest.raises(DataError, match="val_list.txt does not exist.*Global.val_list"):
        read_list(tmp_path, "val_list.txt")
