"""A class file with entries of the wrong kind is one line of error, and nothing is written."""

from __future__ import annotations

import pytest
import yaml
from conftest import file_tree
from fake_raw import write_folder

from bench.cli import BAD_INPUT, main


@pytest.mark.parametrize(
    "classes,message",
    [
        (
            {"classes": [{"name": "a", "colour": ["red", 0, 0]}]},
            "colour of class a must be [r, g, b]",
        ),
        (
            {"classes": [{"name": "a", "colour": [1, 2, 3]}], "ignore": ["black"]},
            "each entry of 'ignore' must be [r, g, b] with integers 0..255, got 'black'",
        ),
        ({"classes": [{"name": "a", "value": 300}]}, "value of class a must be an integer label"),
        ({"classes": [{"name": "a", "colour": [1, 2, 3]}], "ignore": 5}, "'ignore' must be a list"),
    ],
)
def test_bad_class_file_is_one_line(tmp_path, monkeypatch, capsys, classes, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BENCH_DATA_ROOT", str(tmp_path / "data"))
    raw = tmp_path / "mine"
    write_folder(raw)
    (raw / "classes.yaml").write_text(yaml.safe_dump(classes))
    before = file_tree(tmp_path)
    assert main(["prepare", "folder", "--raw", str(raw), "--name", "mine"]) == BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert file_tree(tmp_path) == before
