"""The part of Triton Inference Server's model configuration schema (model_config.proto) that an
hdme model repository uses, built with protobuf's descriptor API, so a config.pbtxt can be
checked by parsing it as Triton does (text format) without Triton installed.

Field names, numbers and types follow model_config.proto; a field outside this subset, a wrong
type or an unknown enum value fails the parse."""

from __future__ import annotations

from functools import lru_cache

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from hdme.errors import HdmeError

PLATFORMS = ("onnxruntime_onnx", "tensorrt_plan")

_F = descriptor_pb2.FieldDescriptorProto
_DATA_TYPES = [
    "TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8",
    "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_STRING", "TYPE_BF16",
]


def _field(msg, name: str, number: int, ftype: int, repeated: bool = False, type_name: str | None = None) -> None:
    f = msg.field.add(name=name, number=number, type=ftype)
    f.label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
    if type_name:
        f.type_name = type_name


@lru_cache(maxsize=1)
def model_config_class():
    """The ``inference.ModelConfig`` message class (subset)."""
    fd = descriptor_pb2.FileDescriptorProto(name="hdme_triton_model_config.proto", package="inference", syntax="proto3")
    data_type = fd.enum_type.add(name="DataType")
    for i, name in enumerate(_DATA_TYPES):
        data_type.value.add(name=name, number=i)

    model_input = fd.message_type.add(name="ModelInput")
    fmt = model_input.enum_type.add(name="Format")
    for i, name in enumerate(["FORMAT_NONE", "FORMAT_NHWC", "FORMAT_NCHW"]):
        fmt.value.add(name=name, number=i)
    _field(model_input, "name", 1, _F.TYPE_STRING)
    _field(model_input, "data_type", 2, _F.TYPE_ENUM, type_name=".inference.DataType")
    _field(model_input, "format", 3, _F.TYPE_ENUM, type_name=".inference.ModelInput.Format")
    _field(model_input, "dims", 4, _F.TYPE_INT64, repeated=True)
    _field(model_input, "is_shape_tensor", 6, _F.TYPE_BOOL)
    _field(model_input, "optional", 8, _F.TYPE_BOOL)

    model_output = fd.message_type.add(name="ModelOutput")
    _field(model_output, "name", 1, _F.TYPE_STRING)
    _field(model_output, "data_type", 2, _F.TYPE_ENUM, type_name=".inference.DataType")
    _field(model_output, "dims", 3, _F.TYPE_INT64, repeated=True)
    _field(model_output, "label_filename", 4, _F.TYPE_STRING)
    _field(model_output, "is_shape_tensor", 6, _F.TYPE_BOOL)

    group = fd.message_type.add(name="ModelInstanceGroup")
    kind = group.enum_type.add(name="Kind")
    for i, name in enumerate(["KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"]):
        kind.value.add(name=name, number=i)
    _field(group, "name", 1, _F.TYPE_STRING)
    _field(group, "count", 2, _F.TYPE_INT32)
    _field(group, "gpus", 3, _F.TYPE_INT32, repeated=True)
    _field(group, "kind", 4, _F.TYPE_ENUM, type_name=".inference.ModelInstanceGroup.Kind")

    batching = fd.message_type.add(name="ModelDynamicBatching")
    _field(batching, "preferred_batch_size", 1, _F.TYPE_INT32, repeated=True)
    _field(batching, "max_queue_delay_microseconds", 2, _F.TYPE_UINT64)
    _field(batching, "preserve_ordering", 3, _F.TYPE_BOOL)

    config = fd.message_type.add(name="ModelConfig")
    _field(config, "name", 1, _F.TYPE_STRING)
    _field(config, "platform", 2, _F.TYPE_STRING)
    _field(config, "max_batch_size", 4, _F.TYPE_INT32)
    _field(config, "input", 5, _F.TYPE_MESSAGE, repeated=True, type_name=".inference.ModelInput")
    _field(config, "output", 6, _F.TYPE_MESSAGE, repeated=True, type_name=".inference.ModelOutput")
    _field(config, "instance_group", 7, _F.TYPE_MESSAGE, repeated=True, type_name=".inference.ModelInstanceGroup")
    _field(config, "default_model_filename", 8, _F.TYPE_STRING)
    _field(config, "dynamic_batching", 11, _F.TYPE_MESSAGE, type_name=".inference.ModelDynamicBatching")
    _field(config, "backend", 17, _F.TYPE_STRING)

    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def parse_config(text: str):
    """Parse config.pbtxt text into a ModelConfig and check what the schema cannot express."""
    try:
        config = text_format.Parse(text, model_config_class()())
    except text_format.ParseError as exc:
        raise HdmeError(f"config.pbtxt does not fit Triton's model configuration: {exc}") from None
    problems = []
    if config.platform not in PLATFORMS:
        problems.append(f"platform '{config.platform}' is not one of {', '.join(PLATFORMS)}")
    if config.max_batch_size < 0:
        problems.append("max_batch_size is negative")
    if config.max_batch_size == 0 and config.HasField("dynamic_batching"):
        problems.append("dynamic_batching needs max_batch_size > 0")
    formats = config.DESCRIPTOR.fields_by_name["input"].message_type.enum_types_by_name["Format"]
    image_formats = {formats.values_by_name[f].number for f in ("FORMAT_NHWC", "FORMAT_NCHW")}
    for tensor in config.input:
        if tensor.format in image_formats and len(tensor.dims) != 3:
            problems.append(f"model input NHWC/NCHW require 3 dims ('{tensor.name}' has {len(tensor.dims)})")
    if not config.input or not config.output:
        problems.append("inputs and outputs must be listed")
    for tensor in [*config.input, *config.output]:
        if not tensor.name or tensor.data_type == 0:
            problems.append(f"tensor '{tensor.name}' lacks a name or data type")
        if not tensor.dims or any(d == 0 or d < -1 for d in tensor.dims):
            problems.append(f"tensor '{tensor.name}' dims {list(tensor.dims)}: each must be -1 or positive")
    for group in config.instance_group:
        if group.count < 1:
            problems.append("instance_group count must be at least 1")
    if problems:
        raise HdmeError(f"config.pbtxt: {'; '.join(problems)}")
    return config
