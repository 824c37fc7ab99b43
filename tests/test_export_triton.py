import pytest

from hdme.errors import HdmeError
from hdme.sidecar import write_sidecar
from hdme.export.triton import config_text, write_repository
from hdme.export.triton_schema import parse_config

onnx = pytest.importorskip("onnx")


def _tiny_onnx(path, batch="N", height="H"):
    """A minimal hdme-shaped ONNX model: 'image' [N,3,H,W] → 'sigma' [N,1,H,W]."""
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    weight = numpy_helper.from_array(np.full((1, 3, 1, 1), 1 / 3, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["sigma"])],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, height, "W"])],
        [helper.make_tensor_value_info("sigma", TensorProto.FLOAT, [batch, 1, height, "W"])],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def triton_rule_violations(config, model_shape: list[int], profile_max_batch: int | None = None) -> list[str]:
    """Triton's model-configuration rules as its documentation (model_configuration.md) and
    validator (model_config_utils.cc, ValidateModelInput) state them, for a model whose input has
    ``model_shape`` (-1 where dynamic, batch first):
    - with max_batch_size > 0, "dims" leave out the batch dimension, which the model must have as
      its dynamic first dimension; with max_batch_size 0, "dims" are the full shape;
    - "model input NHWC/NCHW require 3 dims";
    - dynamic batching needs max_batch_size > 0;
    - a TensorRT plan's max_batch_size may not exceed its profile's largest batch."""
    problems = []
    for tensor in config.input:
        if tensor.format in (1, 2) and len(tensor.dims) != 3:  # FORMAT_NHWC, FORMAT_NCHW
            problems.append("model input NHWC/NCHW require 3 dims")
        full = ([-1] if config.max_batch_size > 0 else []) + list(tensor.dims)
        if config.max_batch_size > 0 and model_shape[0] != -1:
            problems.append("batching needs a dynamic batch dimension")
        if len(full) != len(model_shape) or any(m != -1 and c != m for c, m in zip(full, model_shape)):
            problems.append(f"config shape {full} does not fit the model's {model_shape}")
    if config.HasField("dynamic_batching") and config.max_batch_size == 0:
        problems.append("dynamic batching needs max_batch_size > 0")
    if profile_max_batch is not None and config.max_batch_size > profile_max_batch:
        problems.append("max_batch_size above the profile's largest batch")
    return problems


def _engine(tmp_path, max_batch: int):
    engine = tmp_path / f"m{max_batch}.engine"
    engine.write_bytes(b"serialized engine")
    write_sidecar(engine, {
        "tensorrt_version": "10.3.0", "gpu_name": "GPU", "compute_capability": "8.7", "precision": "fp16",
        "profile": {"min": [1, 3, 256, 256], "opt": [1, 3, 736, 1280], "max": [max_batch, 3, 1088, 1920]},
        "multiple": 32, "onnx_sha256": "0" * 64, "calib_sha256": None, "hdme_version": "0.1.0",
    })
    return engine


@pytest.mark.parametrize("case", ["dynamic onnx", "static onnx", "engine batch 4", "engine batch 1", "engine unbatched"])
def test_generated_configs_follow_tritons_rules(tmp_path, case):
    if case == "dynamic onnx":
        model, shape, profile_batch, options = _tiny_onnx(tmp_path / "d.onnx"), [-1, 3, -1, -1], None, {}
    elif case == "static onnx":
        model, shape, profile_batch, options = _tiny_onnx(tmp_path / "s.onnx", batch=1, height=256), [1, 3, 256, -1], None, {}
    else:
        batch = 1 if case == "engine batch 1" else 4
        model, shape, profile_batch = _engine(tmp_path, batch), [-1, 3, -1, -1], batch
        options = {"max_batch": 0} if case == "engine unbatched" else {}
    config = parse_config((write_repository(model, tmp_path / "repo", **options) / "config.pbtxt").read_text())
    assert triton_rule_violations(config, shape, profile_batch) == []


def test_onnx_repository_passes_the_schema(tmp_path):
    model = _tiny_onnx(tmp_path / "hdme-tiny.int8.onnx")
    entry = write_repository(model, tmp_path / "repo", max_batch=4, instances=2)
    assert entry == tmp_path / "repo" / "hdme-tiny-int8"
    assert (entry / "1" / "model.onnx").read_bytes() == model.read_bytes()
    config = parse_config((entry / "config.pbtxt").read_text())
    assert config.name == "hdme-tiny-int8" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 4
    assert [(t.name, list(t.dims)) for t in config.input] == [("image", [3, -1, -1])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("sigma", [1, -1, -1])]
    assert config.HasField("dynamic_batching") and config.instance_group[0].count == 2
    # Writing again replaces the entry and leaves no staging folders behind.
    write_repository(model, tmp_path / "repo", max_batch=2)
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["hdme-tiny-int8"]
    assert parse_config((entry / "config.pbtxt").read_text()).max_batch_size == 2


def test_shipped_model_serves_its_onnx_and_bad_places_are_one_line(tmp_path):
    from hdme.weights import shipped_onnx

    entry = write_repository("hdme-edge", tmp_path / "repo")
    assert (entry / "1" / "model.onnx").read_bytes() == shipped_onnx("hdme-edge").read_bytes()
    taken = tmp_path / "taken.txt"
    taken.write_text("")
    with pytest.raises(HdmeError, match="taken.txt: exists and is not a folder"):
        write_repository("hdme-edge", taken)
    with pytest.raises(HdmeError, match="no shipped model named 'hdme-nothing'"):
        write_repository("hdme-nothing", tmp_path / "repo")


def test_static_onnx_is_served_without_batching(tmp_path):
    model = _tiny_onnx(tmp_path / "fixed.onnx", batch=1, height=256)
    config = parse_config((write_repository(model, tmp_path / "repo") / "config.pbtxt").read_text())
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [1, 3, 256, -1]


def test_engine_repository_uses_the_sidecar_profile(tmp_path):
    engine = _engine(tmp_path, 4)
    entry = write_repository(engine, tmp_path / "repo", name="defocus")
    config = parse_config((entry / "config.pbtxt").read_text())
    assert config.platform == "tensorrt_plan" and (entry / "1" / "model.plan").is_file()
    assert config.instance_group[0].kind == 1  # KIND_GPU
    assert config.max_batch_size == 4  # the default of 8 capped at the profile's largest batch
    with pytest.raises(HdmeError, match="largest batch 4"):
        write_repository(engine, tmp_path / "repo", max_batch=8)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace("max_batch_size: 4", 'max_batch_size: "4"'), "integer"),
        (lambda t: t.replace("max_batch_size", "max_batch"), "no field named"),
        (lambda t: t.replace("TYPE_FP32", "TYPE_FLOAT32", 1), "no value named"),
        (lambda t: t.replace("dims: [ 3, -1, -1 ]", "dims: [ 3, 0, -1 ]"), "must be -1 or positive"),
        (lambda t: t.replace("onnxruntime_onnx", "pytorch_libtorch"), "platform"),
        (lambda t: t.replace("max_batch_size: 4", "max_batch_size: 0"), "dynamic_batching needs"),
        (lambda t: t + "sequence_batching { }\n", "no field named"),
        (lambda t: t.replace("dims: [ 3, -1, -1 ]", "dims: [ 1, 3, -1, -1 ]"), "NHWC/NCHW require 3 dims"),
    ],
)
def test_schema_rejects_wrong_fields_and_types(edit, message):
    good = config_text("m", "onnxruntime_onnx", 4, [3, None, None], 1)
    parse_config(good)
    with pytest.raises(HdmeError, match=message):
        parse_config(edit(good))


def test_wrong_model_kind_is_refused(tmp_path):
    weights = tmp_path / "m.safetensors"
    weights.write_bytes(b"{}")
    with pytest.raises(HdmeError, match="serves .onnx or .engine"):
        write_repository(weights, tmp_path / "repo")
    engine = tmp_path / "lonely.engine"
    engine.write_bytes(b"x")
    with pytest.raises(HdmeError, match="missing"):
        write_repository(engine, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()
