"""Model tooling: downloads, ONNX graph preparation, Triton configs, the Python-backend model file."""
