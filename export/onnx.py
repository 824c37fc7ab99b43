"""PyTorch → ONNX export with checks, simplification, metadata and a parity test; ONNX loading
and inspection helpers the other export steps share (no torch needed for those)."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hdme.contract import INPUT_DOC, INPUT_NAME, OUTPUT_DOC, OUTPUT_NAME
from hdme.conventions import SIGMA_SCALE
from hdme.errors import HdmeError
from hdme.io import atomic_path

DEFAULT_OPSET = 17
# Per-channel Q/DQ needs opset 13; the TorchScript-based exporter (see export_onnx) stops at 20.
OPSET_RANGE = (13, 20)
PARITY_ATOL_PX = 0.01  # the most an FP32 export may differ from PyTorch, in σ px


def check_multiple(h: int, w: int, multiple: int, what: str) -> None:
    if h % multiple or w % multiple:
        raise HdmeError(f"{what} {h}x{w} does not fit the network: height and width must be multiples of {multiple}")


def load_onnx(path: str | os.PathLike):
    """An hdme ONNX model (input 'image', output 'sigma') or one clear HdmeError."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise HdmeError(f"{path}: no such ONNX file")
    if path.suffix.lower() != ".onnx":
        raise HdmeError(f"{path}: expected an .onnx file, not '{path.suffix or 'no extension'}'")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except (DecodeError, onnx.checker.ValidationError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HdmeError(f"{path}: not a valid ONNX model ({first})") from None
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if inputs != [INPUT_NAME] or outputs != [OUTPUT_NAME]:
        raise HdmeError(
            f"{path}: not an hdme model (inputs {inputs}, outputs {outputs}; expected ['{INPUT_NAME}'] → ['{OUTPUT_NAME}'])"
        )
    return model


def metadata(model) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def set_metadata(model, props: dict[str, str]) -> None:
    kept = {p.key: p.value for p in model.metadata_props if p.key not in props}
    del model.metadata_props[:]
    for key, value in {**kept, **props}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)


def network_multiple(model) -> int:
    """The side multiple the network works at (written at export; 1 if unknown)."""
    return int(metadata(model).get("multiple", "1"))


def input_dims(model) -> list[int | None]:
    """[N, C, H, W] of the input, None where the dimension is dynamic."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else None for d in dims]


def precision(model) -> str:
    """'int8' when the graph holds Q/DQ nodes, 'fp16' when it computes in float16, else 'fp32'."""
    import onnx

    ops = {n.op_type for n in model.graph.node}
    if {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger"} & ops:
        return "int8"
    if any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer):
        return "fp16"
    return "fp32"


def ort_session(path: str | os.PathLike, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped Fail/InvalidGraph errors
        raise HdmeError(f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0]})") from None


@dataclass
class ExportResult:
    path: Path
    parity: list[dict]  # one row per test size: size, batch and error statistics in σ px


def _load_torch_model(model: str | os.PathLike, untrained: bool):
    from hdme.train.models import create_model, load_model

    if untrained:
        return create_model(str(model)).eval()
    return load_model(model)


def export_onnx(
    model,
    out: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    dynamic: bool = True,
    size: tuple[int, int] | None = None,
    batch: int = 1,
    untrained: bool = False,
    log=print,
) -> ExportResult:
    """Export ``model`` (an HDMENet, a shipped name or a .safetensors path) to ``out``.

    The file appears only after the ONNX checker, simplification and the parity test passed."""
    import onnx
    import onnxslim
    import torch

    from hdme import __version__
    from hdme.metrics import error_stats

    net = model if isinstance(model, torch.nn.Module) else _load_torch_model(model, untrained)
    net = net.eval()
    multiple = int(getattr(net, "multiple", 1))
    if not dynamic and size is None:
        raise HdmeError("a static export needs --size HxW")
    if size is not None:
        check_multiple(*size, multiple, "size")
    if batch < 1:
        raise HdmeError(f"batch must be at least 1, not {batch}")
    if not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        raise HdmeError(f"opset {opset}: hdme exports opsets {OPSET_RANGE[0]} to {OPSET_RANGE[1]}")
    h, w = size or (8 * multiple, 8 * multiple)
    example = torch.rand(batch, 3, h, w)
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise HdmeError(f"{out}: the output of an ONNX export ends in .onnx")

    with atomic_path(out) as tmp:
        # The TorchScript-based exporter (dynamo=False): it traces the model's reflect padding to the
        # network multiple into Shape/Mod/Pad ops that stay dynamic in H and W, and needs no
        # onnxscript. The dynamo exporter requires onnxscript and symbolic-shape constraints for the
        # modulo arithmetic of that padding, which it does not derive on its own.
        axes = {0: "batch", 2: "height", 3: "width"}
        with torch.no_grad(), warnings.catch_warnings():
            # The exporter is chosen deliberately (above); its deprecation notice is not for users.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                net,
                (example,),
                str(tmp),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=False,
                do_constant_folding=True,
                dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes} if dynamic else None,
            )
        graph = onnx.load(str(tmp))
        onnx.checker.check_model(graph, full_check=True)
        graph = onnxslim.slim(graph)
        onnx.checker.check_model(graph, full_check=True)
        graph.doc_string = f"hdme {getattr(net, 'name', 'model')}: {INPUT_DOC} -> {OUTPUT_DOC}"
        set_metadata(
            graph,
            {
                "hdme_version": __version__,
                "model": getattr(net, "name", type(net).__name__),
                "sigma_scale": f"{SIGMA_SCALE:g}",
                "multiple": str(multiple),
                "input": f"{INPUT_NAME}: {INPUT_DOC}",
                "output": f"{OUTPUT_NAME}: {OUTPUT_DOC}",
            },
        )
        onnx.save(graph, str(tmp))

        session = ort_session(tmp)
        sizes = [(h, w)] if not dynamic else [(256, 256), (240, 320)]
        rows = []
        gen = torch.Generator().manual_seed(0)
        for sh, sw in sizes:
            n = batch if not dynamic else 2
            x = torch.rand(n, 3, sh, sw, generator=gen)
            with torch.no_grad():
                ref = net(x).numpy()
            got = run_onnx(session, x.numpy())
            stats = error_stats(got, ref)
            rows.append({"size": f"{sh}x{sw}", "batch": n, **stats})
            log(f"parity ORT vs PyTorch {sh}x{sw} batch {n}: max {stats['max']:.2e} px, mean {stats['mean']:.2e} px")
        worst = max(r["max"] for r in rows)
        if worst > PARITY_ATOL_PX:
            raise HdmeError(f"ONNX export differs from PyTorch by {worst:.4f} px (allowed {PARITY_ATOL_PX} px); nothing written")
    return ExportResult(out, rows)


def run_onnx(session, images: np.ndarray) -> np.ndarray:
    """σ/10 outputs of an ORT session for float32 [B,3,H,W] inputs."""
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images, dtype=np.float32)})[0]
