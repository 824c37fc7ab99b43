"""The runtime installs and runs without torch: predict and run on an ONNX model, importing neither
the training nor the export stage, nor an optional engine it was not asked for."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import cv2

from runtime_support import textured_rgb, tiny_onnx, write_video


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_runtime_never_imports_torch_on_the_onnx_path(tmp_path):
    model = tiny_onnx(tmp_path / "tiny.onnx")
    cv2.imwrite(str(tmp_path / "a.png"), textured_rgb(64, 64))
    video = write_video(tmp_path / "v.avi", frames=4, h=64, w=64)
    # Optional engines are made unimportable, as in a base install.
    proc = _run(f"""
        import sys
        sys.modules["openvino"] = None
        import hdme.runtime.backends, hdme.runtime.predict, hdme.runtime.pipeline, hdme.runtime.sources
        import hdme.runtime.sinks, hdme.runtime.bench, hdme.runtime.cli, hdme.runtime.live, hdme.runtime.temporal
        from hdme.runtime.predict import DefocusPredictor
        predictor = DefocusPredictor({str(model)!r})
        sigma = predictor.predict(__import__("numpy").zeros((40, 48, 3), "uint8"))
        assert sigma.shape == (40, 48) and predictor.backend.name == "onnxruntime"
        import hdme.contract, hdme.sidecar
        hdme.contract.model_precision({str(model)!r})
        leaked = [m for m in ("torch", "hdme.export", "hdme.train") if m in sys.modules]
        assert not leaked, f"imported {{leaked}}"
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    # With torch made unimportable, as in a runtime-only install, the CLI still works end to end.
    proc = _run(f"""
        import sys
        sys.modules["torch"] = sys.modules["openvino"] = None
        sys.argv = ["hdme", "predict", {str(tmp_path / 'a.png')!r}, "--out", {str(tmp_path / 'out')!r},
                    "--model", {str(model)!r}]
        from hdme.cli import main
        try:
            main()
        except SystemExit as exc:
            assert not exc.code, exc.code
        sys.argv = ["hdme", "run", {str(video)!r}, "--model", {str(model)!r}, "--save-video", {str(tmp_path / 'o.avi')!r},
                    "--temporal-filter"]
        try:
            main()
        except SystemExit as exc:
            assert not exc.code, exc.code
    """)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert (tmp_path / "out" / "a.npy").is_file() and (tmp_path / "o.avi").is_file()


def test_commands_of_missing_extras_say_what_to_install(tmp_path):
    model = tiny_onnx(tmp_path / "tiny.onnx")
    # A runtime-only install: neither torch nor onnx can be imported.
    commands = {
        "train": ["train", "--out", str(tmp_path / "run"), "--steps", "1"],
        "export onnx": ["export", "onnx", "--out", str(tmp_path / "m.onnx")],
        "export quantize": ["export", "quantize", str(model), "--precision", "fp16"],
    }
    for label, argv in commands.items():
        proc = _run(f"""
            import sys
            sys.modules["torch"] = sys.modules["onnx"] = None
            sys.argv = ["hdme", *{argv!r}]
            from hdme.cli import main
            main()
        """)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, (label, proc.stderr)
        assert "is not installed; install it with: pip install 'hdme[" in lines[0], (label, lines)
