"""ONNX export of quantconv GGUF files (docs/onnx.md).

    encodings.py  one GGUF tensor's codes/scales -> ONNX initializers + the nodes that dequantize them
    graph.py      the llama/mistral/qwen2 decoder with KV cache, written with onnx.helper
    io.py         metadata_props, atomic save (external data over 2 GB), loading the metadata back

This package is named after the format, not the `onnx` library: inside it, `import onnx` still
resolves to the library (absolute imports).
"""
