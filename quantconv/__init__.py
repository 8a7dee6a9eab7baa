"""quantconv: calibrated post-training quantization of causal LMs into GGUF/ONNX, and a CPU runtime."""
__version__ = "0.1.0"
