"""ONNX export of quantconv GGUF files (docs/onnx.md).

    encodings.py  one GGUF tensor's codes/scales -> ONNX initializers + the nodes that dequantize them
    graph.py      the decoder of every models.yaml family with KV cache, written with onnx.helper
    io.py         metadata_props, atomic save (external data over 2 GB), loading the metadata back
    genai.py      onnxruntime-genai's genai_config.json (+ tokenizer.json) for the ort flavor
    describe.py   what `quantconv inspect model.onnx` reports

This package is named after the format, not the `onnx` library: inside it, `import onnx` still
resolves to the library (absolute imports).
"""
