"""The model contract: metadata read from the files themselves, and stages importing one way."""

from __future__ import annotations

import ast
from pathlib import Path

import onnx
import pytest

from hdme.contract import ARTIFACT_KINDS, artifact_kind, model_metadata, model_precision, onnx_metadata, parse_size
from hdme.errors import HdmeError
from hdme.sidecar import SIDECAR_KEYS, write_sidecar
from runtime_support import tiny_onnx

REPO = Path(__file__).resolve().parents[1]
# Folder of each package; a stage may import the core and the stages listed for it, no other.
PACKAGES = {"hdme": REPO / "hdme", "hdme.train": REPO / "train", "hdme.export": REPO / "export", "hdme.runtime": REPO / "runtime"}
ALLOWED = {"hdme": set(), "hdme.train": set(), "hdme.export": {"hdme.train"}, "hdme.runtime": set()}
# Inside functions only, where torch or an engine is needed:
# - the torch engine runs the network's PyTorch definition: the runtime may reach the training stage;
# - the evaluation harness renders a synthetic set with the synthesis stage, when one is asked for;
# - the quantisation check runs the exported file through the predictor `hdme bench accuracy` uses,
#   so that both print the same numbers for the same set and file.
LAZY_ALLOWED = {"hdme.runtime": {"hdme.train"}, "hdme": {"hdme.train"}, "hdme.export": {"hdme.runtime"}}


def test_sizes_parse_or_fail_in_one_line():
    assert parse_size("480x640") == (480, 640) and parse_size("720×1280") == (720, 1280)
    for bad in ("480", "axb", "0x5"):
        with pytest.raises(HdmeError, match="size"):
            parse_size(bad)


def test_onnx_metadata_is_read_without_onnx_and_survives_renaming(tmp_path):
    path = tiny_onnx(tmp_path / "m.onnx", multiple=8)
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {"multiple": "8", "precision": "int8", "int8_target": "cpu"})
    onnx.save(model, str(path))
    assert onnx_metadata(path) == {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    renamed = path.rename(tmp_path / "plain.onnx")
    assert model_precision(renamed) == "int8"
    assert model_precision(tiny_onnx(tmp_path / "x.int8-cpu.onnx")) == "fp32"  # the name says nothing


def test_engine_precision_comes_from_its_sidecar(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(HdmeError, match="build record"):
        model_precision(engine)
    write_sidecar(engine, {**{k: None for k in SIDECAR_KEYS}, "precision": "fp16"})
    assert model_precision(engine) == "fp16"


def test_unreadable_models_fail_in_one_line(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff")
    bad_ir = tmp_path / "bad.xml"
    bad_ir.write_text("<net><rt_info>")
    for path, pattern in ((junk, "not a readable ONNX"), (bad_ir, "not a readable OpenVINO IR"),
                          (tmp_path / "w.txt", "not a model file"), (tmp_path / "missing.onnx", "no such model file")):
        with pytest.raises(HdmeError, match=pattern) as err:
            model_metadata(path)
        assert "\n" not in str(err.value)
    (tmp_path / "w.safetensors").write_bytes(b"{}")
    assert model_metadata(tmp_path / "w.safetensors") == {}


def test_every_suffix_names_one_kind():
    suffixes = [s for kind in ARTIFACT_KINDS for s in kind.suffixes]
    assert len(suffixes) == len(set(suffixes))
    assert all(artifact_kind(f"m{s.upper()}") is kind for kind in ARTIFACT_KINDS for s in kind.suffixes)


def _stage(module: str) -> str | None:
    """The package an hdme module belongs to, most specific first."""
    return next((p for p in sorted(PACKAGES, key=len, reverse=True) if module == p or module.startswith(p + ".")), None)


def _imports(path: Path, package: str):
    """(imported module, inside a function) for every import of a source file."""
    tree = ast.parse(path.read_text(), str(path))
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    lazy = {id(n) for f in functions for n in ast.walk(f)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if node.level == 0 else [package]
        else:
            continue
        for name in names:
            yield name, id(node) in lazy


def test_stages_import_the_core_and_their_dependencies_only():
    wrong = []
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            # The command line composes the stages: its modules register every stage's commands.
            if path.name == "cli.py":
                continue
            for module, lazy in _imports(path, package):
                target = _stage(module)
                if target in (None, "hdme", package):
                    continue
                if target in ALLOWED[package] or (lazy and target in LAZY_ALLOWED.get(package, set())):
                    continue
                wrong.append(f"{path.relative_to(REPO)} imports {module}")
    assert not wrong, wrong
