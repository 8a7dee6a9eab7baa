"""Files exported with --act-dtype: the runtime rounds the inputs of every decoder linear exactly as the
exporter's calibration did (convert/act_quant.py vs cpp/engine/act_quant.cpp)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from quantconv.convert.act_quant import get_act_dtype  # noqa: E402
from quantconv.convert.calibrate import CalibOptions  # noqa: E402
from quantconv.convert.export import export  # noqa: E402
from quantconv.convert.sources import open_source  # noqa: E402
from quantconv.convert.torch_model import DecoderConfig, Head, Layer, Rope  # noqa: E402
from quantconv.errors import QuantconvError  # noqa: E402
from quantconv.runtime.engine import Engine  # noqa: E402
from tests.shared_data import data_file  # noqa: E402
from tests.tiny_models import make_tiny_hf_model  # noqa: E402

IDS = [1, 5, 9, 13, 20, 40, 77, 3]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return open_source(str(make_tiny_hf_model(tmp_path_factory.mktemp("tiny"), "llama")))


def _torch_logits(src, act):
    cfg = DecoderConfig.from_source(src)
    head, rope = Head(src, cfg), Rope(cfg, len(IDS), "cpu")
    with torch.no_grad():
        x = head.embed_tokens(torch.tensor([IDS]))
        for i in range(cfg.n_layers):
            layer = Layer(src, cfg, i)
            layer.act = act
            x = layer.forward(x, rope)
        return head.logits(x)[0].numpy()


@pytest.mark.parametrize("name", ["int8", "mxint8", "mxfp8", "mxfp6", "mxfp4"])
def test_runtime_quantizes_activations_like_calibration(tiny, tmp_path, name):
    act = get_act_dtype(name)
    out = tmp_path / "m.gguf"
    export(tiny, out, "f32", calib=CalibOptions(calib=str(data_file("wikitext-2-valid.txt")), nsamples=2, seqlen=16,
                                                 act_dtype=act))
    got = Engine(out, n_ctx=32, exact=True).eval(IDS, all_logits=True)
    assert np.abs(got - _torch_logits(tiny, act)).max() < 1e-4
    assert np.abs(got - _torch_logits(tiny, None)).max() > 1e-3      # the rounding really happens


def test_unknown_act_dtype_in_file_is_refused(tiny, tmp_path):
    out = tmp_path / "m.gguf"
    export(tiny, out, "f32")
    eng = Engine(out, n_ctx=32)
    cfg = dict(eng.config, act_dtype="fp3")
    from quantconv.runtime.engine import _ext, model_tensors
    with pytest.raises(Exception, match="fp3"):
        _ext().Model(cfg, model_tensors(eng._file, cfg["n_layer"]), 32, 1)
    with pytest.raises(QuantconvError):
        get_act_dtype("fp3")
