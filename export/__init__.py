"""ONNX export, LayerNorm2d fusion, parity checks and benchmarks for ln2d models."""
