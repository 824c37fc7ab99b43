"""The README's NVIDIA commands, run as written up to the point where a GPU is needed."""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hdme.cli import app
from hdme.errors import HdmeError

ROOT = Path(__file__).resolve().parents[1]


def readme_commands(prefix: str) -> list[list[str]]:
    """The README's shell lines that start with ``prefix``, as argument lists without the comment."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    lines = {re.sub(r"\s+#.*$", "", line).strip() for block in blocks for line in block.splitlines()}
    return [shlex.split(line)[1:] for line in sorted(lines) if line.startswith(prefix)]


def _gpu_build_possible() -> bool:
    if importlib.util.find_spec("tensorrt") is None:
        return False
    from hdme.cuda import open_cuda_api

    try:
        open_cuda_api().close()
    except HdmeError:
        return False
    return True


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder holding what the README's export commands write before 'hdme export trt'."""
    from hdme.weights import find_weights

    folder = tmp_path_factory.mktemp("readme")
    shutil.copy(find_weights("hdme-edge")["onnx"], folder / "hdme-edge.onnx")
    # Two held-out images with σ maps: the quantize commands evaluate on them instead of on
    # synthesised ones, and calibrate on 8 images, only to be quick.
    heldout = folder / "heldout"
    heldout.mkdir()
    for image in sorted((ROOT / "calib_data").glob("*.png"))[:2]:
        shutil.copy(image, heldout / image.name)
        np.save(heldout / f"{image.stem}.npy", np.full((256, 256), 2.0, np.float32))
    quick = {"int8": ["--calib-count", "8", "--eval", str(heldout)], "fp16": ["--eval", str(heldout)]}
    quantize = readme_commands("hdme export quantize hdme-edge.onnx")
    assert {"int8", "fp16"} <= {c[c.index("--precision") + 1] for c in quantize}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)  # where the default --calib calib_data is
        for command in quantize:
            command = [str(folder / a) if a.endswith(".onnx") else a for a in command]
            result = CliRunner().invoke(app, command + quick[command[command.index("--precision") + 1]])
            assert result.exit_code == 0, (command, result.output, result.exception)
    return folder


def test_readme_trt_commands_pass_every_check_before_the_gpu(workdir, monkeypatch):
    from hdme.export.onnx import input_dims, load_onnx, network_multiple
    from hdme.export.tensorrt import DEFAULT_SHAPES, parse_shapes, validate_profile
    from hdme.runtime.backends.tensorrt import fit_profile
    from hdme.runtime.predict import pad_to_multiple

    commands = readme_commands("hdme export trt")
    assert len(commands) >= 2  # FP16 and INT8 (the sections share their INT8 command)
    monkeypatch.chdir(workdir)
    buildable = _gpu_build_possible()
    for command in commands:
        onnx_file, out = Path(command[2]), Path(command[command.index("--out") + 1])
        assert onnx_file.is_file(), f"no README command writes {onnx_file}"
        model = load_onnx(onnx_file)
        profile = parse_shapes(command[command.index("--shapes") + 1] if "--shapes" in command else DEFAULT_SHAPES)
        validate_profile(profile, network_multiple(model), input_dims(model))
        for h, w in ((720, 1280), (1080, 1920)):  # the frames the runtime pads to the profile's sides
            fit_profile(pad_to_multiple(np.zeros((1, 3, h, w), np.float32), network_multiple(model)).shape, profile.min, profile.max)
        result = CliRunner().invoke(app, command)
        if buildable:
            assert result.exit_code == 0 and out.is_file(), (command, result.output)
        else:
            # Everything before the build passed; what stops it is the missing GPU or TensorRT.
            assert isinstance(result.exception, HdmeError), (command, result.output, result.exception)
            assert re.search(r"no CUDA library could use GPU|'tensorrt' is not installed", str(result.exception)), result.exception
            assert not out.exists()


def test_readme_triton_and_doctor_commands_run(workdir, monkeypatch):
    from hdme.export.triton_schema import parse_config

    monkeypatch.chdir(workdir)
    ran = 0
    for command in readme_commands("hdme export triton"):
        model = Path(command[command.index("--model") + 1])
        if not model.is_file():  # an engine, built only where a GPU is
            assert model.suffix == ".engine" and not _gpu_build_possible()
            continue
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 0, (command, result.output, result.exception)
        repo = Path(command[command.index("--repo") + 1])
        parse_config((repo / model.stem.replace(".", "-") / "config.pbtxt").read_text())
        ran += 1
    assert ran >= 1
    doctor = readme_commands("hdme doctor")
    assert doctor
    for command in doctor:
        assert CliRunner().invoke(app, command).exit_code == 0
