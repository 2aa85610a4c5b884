"""Models on disk: the safetensors model file (model), which model and backend a task
runs on (loading), ONNX export and runtime (onnx_backend), and the paper's Lightning
checkpoints read by a restricted unpickler (lightning_import, safe_pickle)."""
