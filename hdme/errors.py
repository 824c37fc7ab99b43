"""One exception type for problems a user can fix (bad input, missing file or extra)."""


class HdmeError(Exception):
    """An error whose message is one line a user can act on; the CLI prints it without a traceback."""


# Optional dependencies by top-level module name, and the extra that installs each.
EXTRA_OF_MODULE = {
    "torch": "train", "safetensors": "train", "skimage": "train", "tensorboard": "train",
    "onnx": "export", "onnxslim": "export", "onnxconverter_common": "export",
    "modelopt": "modelopt", "tensorrt": "trt", "cuda": "trt",
}


def missing_extra(exc: ModuleNotFoundError) -> HdmeError | None:
    """The install hint for an optional dependency that is missing, or None for any other module."""
    module = (exc.name or "").split(".")[0]
    if module not in EXTRA_OF_MODULE:
        return None
    return HdmeError(f"'{module}' is not installed; install it with: pip install 'hdme[{EXTRA_OF_MODULE[module]}]'")


def require(module: str, extra: str):
    """Import an optional dependency or fail with the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise HdmeError(
            f"'{module}' is not installed; install it with: pip install 'hdme[{extra}]' ({exc})"
        ) from None
