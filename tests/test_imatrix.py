"""llama.cpp's importance-matrix files: both formats read alike, ours round-trip, stock llama-quantize
accepts what we write, and damaged files are refused with one clear message."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from quantconv.errors import QuantconvError
from quantconv.formats.imatrix import Imatrix, ImatrixEntry, read_imatrix, write_imatrix

DATA = Path(__file__).parent / "data" / "imatrix"
GGUF_FILE, DAT_FILE = DATA / "smollm2-2x128.imatrix.gguf", DATA / "smollm2-2x128.imatrix.dat"
TOOLS = Path.home() / ".cache" / "quantconv-peers"


def test_llama_imatrix_files_read_alike_in_both_formats():
    g, d = read_imatrix(GGUF_FILE), read_imatrix(DAT_FILE)
    assert not g.legacy and d.legacy
    assert g.chunk_count == d.chunk_count == 2 and g.chunk_size == 128 and g.datasets == ["calib.txt"]
    # the 30 layers' 7 linears of SmolLM2, by GGUF name
    assert len(g.entries) == 210 and set(g.entries) == set(d.entries)
    assert {n.split(".", 2)[2] for n in g.entries} == {f"{r}.weight" for r in (
        "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}
    for name in g.entries:
        a, b = g.importance(name), d.importance(name)
        assert a.shape == b.shape and a.shape[0] in (576, 1536)
        np.testing.assert_allclose(a, b, rtol=1e-6, err_msg=name)
        assert (a > 0).all()
    # every token of the 2 chunks counted once per tensor
    assert {float(e.counts[0]) for e in g.entries.values()} == {256.0}


def test_written_file_reads_back_identically(tmp_path):
    g = read_imatrix(GGUF_FILE)
    write_imatrix(tmp_path / "ours.gguf", g)
    o = read_imatrix(tmp_path / "ours.gguf")
    assert (o.datasets, o.chunk_count, o.chunk_size) == (g.datasets, g.chunk_count, g.chunk_size)
    assert set(o.entries) == set(g.entries)
    for name, e in g.entries.items():
        np.testing.assert_array_equal(o.entries[name].sums, e.sums)
        np.testing.assert_array_equal(o.entries[name].counts, e.counts)
    assert not list(tmp_path.glob("*.part"))


def test_importance_is_one_where_nothing_was_counted():
    e = ImatrixEntry(np.array([[2.0, 4.0], [6.0, 8.0]], np.float32), np.array([2.0, 0.0], np.float32))
    np.testing.assert_array_equal(e.importance(), [[1.0, 2.0], [1.0, 1.0]])


@pytest.mark.parametrize("damage", ["truncate", "garbage", "model"])
def test_damaged_or_wrong_files_are_refused(tmp_path, damage):
    bad = tmp_path / "bad.imatrix"
    if damage == "truncate":
        bad.write_bytes(DAT_FILE.read_bytes()[:1000])
    elif damage == "garbage":
        bad.write_bytes(b"\x07\x00\x00\x00not an imatrix at all")
    else:  # a model GGUF is not an importance matrix
        from quantconv.formats.models import default_reference, reference_path

        try:
            bad = reference_path(default_reference())
        except QuantconvError:
            pytest.skip("the reference model is not installed")
    with pytest.raises(QuantconvError, match="not a readable importance matrix"):
        read_imatrix(bad)
    with pytest.raises(QuantconvError, match="no entries"):
        write_imatrix(tmp_path / "empty.gguf", Imatrix())


def test_stock_llama_quantize_accepts_our_file(tmp_path):
    tools = sorted(TOOLS.glob("llama-tools-0.3.36-*/bin/llama-quantize"))
    if not tools:  # built by scripts/build-llama-tools.sh (not part of CI's install yet)
        pytest.skip("llama-quantize is not built (bash scripts/build-llama-tools.sh)")
    from quantconv.formats.models import default_reference, reference_path

    model = reference_path(default_reference())
    ours = tmp_path / "ours.gguf"
    write_imatrix(ours, read_imatrix(GGUF_FILE))
    out = tmp_path / "q4_k_m.gguf"
    proc = subprocess.run([str(tools[-1]), "--allow-requantize", "--imatrix", str(ours), str(model), str(out),
                           "Q4_K_M", "2"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "loaded 210 importance matrix entries" in proc.stdout + proc.stderr
    assert out.stat().st_size > 0
    shutil.rmtree(tmp_path, ignore_errors=True)
