"""hdme.export: ONNX, FP16/INT8 quantisation, TensorRT engines, Triton repositories, parity checks."""
