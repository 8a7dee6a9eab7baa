"""Where the peers' files live that are not Python packages: llama.cpp's sources from the
llama-cpp-python 0.3.36 sdist (its HF->GGUF converter and vocabulary test files), unpacked by
scripts/install-peers.sh. Missing -> skip, or fail under CI (QUANTCONV_CI=1)."""
from __future__ import annotations

import os
from pathlib import Path

from tests.shared_data import require

LLAMA_CPP_SRC = Path(os.environ.get("QUANTCONV_PEER_SRC", Path.home() / ".cache" / "quantconv-peers")) / "llama.cpp-0.3.36"


def llama_cpp_src() -> Path:
    """The unpacked llama.cpp folder (convert_hf_to_gguf.py, conversion/, gguf-py/, models/)."""
    require((LLAMA_CPP_SRC / "convert_hf_to_gguf.py").is_file(),
            f"llama.cpp's sources are not at {LLAMA_CPP_SRC} (bash scripts/install-peers.sh)")
    return LLAMA_CPP_SRC


def vocab_file(name: str) -> Path:
    """models/ggml-vocab-<name>.gguf: a real tokenizer's vocabulary, with its .inp/.out test pairs."""
    path = llama_cpp_src() / "models" / f"ggml-vocab-{name}.gguf"
    require(path.is_file(), f"{path} is missing (bash scripts/install-peers.sh)")
    return path
