"""hdme doctor: what this machine can run, and the fix for each CUDA mismatch."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from hdme.cli import app
from hdme.runtime.backends import BACKEND_NAMES
from hdme.runtime.doctor import NO_GPU, PROBES, cuda_driver_version, cuda_findings, cuda_mismatch, diagnose

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_a_driver_runs_its_cuda_major_and_older_ones_only():
    pin = "'cuda-python>={major},<{next}'"
    # cuda-python 13 on JetPack 6 (CUDA 12.6): the fix installs the CUDA 12 build.
    fix = cuda_mismatch("cuda-python", 13, (12, 6), pin)
    assert fix.endswith("pip install 'cuda-python>=12,<13'") and "CUDA 12.6" in fix
    assert cuda_mismatch("cuda-python", 12, (13, 0), pin) is None
    assert cuda_mismatch("cuda-python", 12, (12, 2), pin) is None
    assert cuda_mismatch("TensorRT", None, (12, 6), "'hdme[trt-cu{major}]'") is None  # JetPack's own TensorRT
    assert cuda_mismatch("TensorRT", 13, (12, 8), "'hdme[trt-cu{major}]'").endswith("pip install 'hdme[trt-cu12]'")


def test_cuda_libraries_without_a_driver_run_nothing_and_need_no_fix(monkeypatch):
    import hdme.runtime.doctor as doctor

    installed = {"cuda-python": "13.0.1", "pycuda": "2025.1"}
    monkeypatch.setattr(doctor, "_version", lambda *names: next((installed[n] for n in names if n in installed), None))
    rows = {f.name: f for f in cuda_findings(None)}
    assert rows["NVIDIA driver"].version == "none"
    for name in installed:
        assert rows[name].runs == NO_GPU and rows[name].fix is None
    rows = {f.name: f for f in cuda_findings((12, 6))}  # JetPack 6: cuda-python 13 is too new
    assert rows["cuda-python"].fix.endswith("pip install 'cuda-python>=12,<13'") and not rows["cuda-python"].runs
    assert rows["pycuda"].fix is None and rows["pycuda"].runs == "TensorRT buffers (no CUDA graphs)"


def test_the_extras_the_fixes_name_pin_cuda_python_to_their_cuda_major():
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11")
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    for major in (12, 13):
        requirements = extras[f"trt-cu{major}"]
        assert f"cuda-python>={major},<{major + 1}" in requirements
        assert any(r.startswith(f"tensorrt-cu{major}") for r in requirements)
    assert extras["trt"] == ["hdme[trt-cu12]"]
    from hdme.runtime.backends import ENGINES

    for engine in ENGINES:  # doctor names each engine's registry extra as its install command
        assert not engine.extra or engine.extra in extras, engine.name


def test_every_backend_has_a_probe():
    assert list(PROBES) == [name for name in BACKEND_NAMES if name != "auto"]


def test_doctor_reports_what_this_machine_has():
    findings = {f.name: f for f in diagnose()}
    driver = cuda_driver_version()
    assert findings["NVIDIA driver"].version == (f"CUDA {driver[0]}.{driver[1]}" if driver else "none")
    assert findings["onnxruntime"].version == ort.__version__
    if "CPUExecutionProvider" in ort.get_available_providers():
        assert "cpu: fp32 fp16 int8" in findings["onnxruntime"].runs
    if importlib.util.find_spec("tensorrt") is None:
        assert findings["tensorrt"].version == "not installed" and not findings["tensorrt"].runs.startswith("fp32")
    if importlib.util.find_spec("openvino") is not None:
        import openvino

        from hdme.runtime.backends.openvino import cpu_precisions

        assert findings["openvino"].version == openvino.__version__
        assert findings["openvino"].runs == "cpu: " + " ".join((*cpu_precisions(), "int8"))
    else:
        assert "hdme[openvino]" in findings["openvino"].fix
    if importlib.util.find_spec("cuda") is not None and driver is None:
        # installed on a machine without a GPU: nothing runs, and nothing is broken
        assert findings["cuda-python"].runs == NO_GPU and findings["cuda-python"].fix is None

    result = CliRunner().invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    for name in ("NVIDIA driver", *PROBES):
        assert name in result.output
    problems = sum(1 for f in findings.values() if f.fix)
    assert re.search(rf"{problems} to fix" if problems else "nothing to fix", result.output)
