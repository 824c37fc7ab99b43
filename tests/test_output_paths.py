"""Output paths that cannot be written are refused in one line, before the work they would hold."""

import pytest
from typer.testing import CliRunner

from hdme.cli import app
from hdme.errors import HdmeError
from hdme.io import check_output_file, make_folder, write_json


def test_folders_and_files_in_the_way(tmp_path):
    (tmp_path / "file").write_text("")
    (tmp_path / "dir").mkdir()
    assert make_folder(tmp_path / "new" / "deeper").is_dir()
    for call, message in (
        (lambda: make_folder(tmp_path / "file"), "file: exists and is not a folder"),
        (lambda: make_folder(tmp_path / "file" / "sub"), "file: exists and is not a folder"),
        (lambda: check_output_file(tmp_path / "dir"), "dir: is a folder; give a file name"),
        (lambda: write_json(tmp_path / "dir", {}), "dir: is a folder; give a file name"),
        (lambda: write_json(tmp_path / "file" / "x.json", {}), "file: exists and is not a folder"),
    ):
        with pytest.raises(HdmeError, match=message):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file", "new"]  # no temporary files left


@pytest.mark.parametrize("command", [
    ["bench", "accuracy", "--dataset", "nowhere", "--method", "zhuo-sim", "--json", "{dir}"],
    ["bench", "latency", "--iters", "1", "--markdown", "{dir}"],
    ["data", "make", "{file}", "--count", "1", "--size", "32"],
    ["train", "--model", "hdme-tiny", "--steps", "1", "--size", "32", "--workers", "0", "--out", "{file}"],
])
def test_commands_refuse_unwritable_outputs_before_working(tmp_path, command):
    pytest.importorskip("torch")
    (tmp_path / "file").write_text("")
    (tmp_path / "dir").mkdir()
    args = [a.format(dir=tmp_path / "dir", file=tmp_path / "file") for a in command]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, HdmeError), result.output
    assert "is a folder; give a file name" in str(result.exception) or "exists and is not a folder" in str(result.exception)
    assert "skipping dataset" not in result.output  # refused before any set was looked at
