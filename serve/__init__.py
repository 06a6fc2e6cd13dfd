"""The ln2d inference server: FastAPI + ONNX Runtime, no torch and no ``ln2d`` imports.

Run it with ``ln2d serve MODEL.onnx``; build it in code with ``serve.app.create_app``.
"""
