import json

import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")

from hdme.cli import app  # noqa: E402
from hdme.errors import HdmeError  # noqa: E402


def test_bench_synth_reports_every_phase_and_the_stream_rate(tmp_path):
    out = tmp_path / "synth.json"
    result = CliRunner().invoke(app, ["bench", "synth", "--recipe", "hdme", "--size", "32", "--batch", "3",
                                      "--chunks", "1", "--workers", "0", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    (row,) = report["rows"]
    assert (row["device"], row["size"], row["workers"], row["batch"]) == ("cpu", 32, 0, 3)
    for key in ("draw_ms", "render_ms", "degrade_ms", "fresh_per_s"):
        assert row[key] > 0, key
    assert row["device_per_s"] == pytest.approx(1000 / (row["render_ms"] + row["degrade_ms"]))
    assert report["meta"]["recipe"] == "hdme" and "fresh samples/s" in result.output


def test_bench_synth_rejects_bad_options_in_one_line():
    for args in (["--device", "gpu0"], ["--batch", "0"], ["--size", "8"]):
        result = CliRunner().invoke(app, ["bench", "synth", *args])
        assert isinstance(result.exception, HdmeError), args
