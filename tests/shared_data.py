"""Where the evaluation text lives: $QUANTCONV_SHARED_DATA, else ../shared/data beside the checkout
(the workplace layout), else /work/shared/data. Under CI (QUANTCONV_CI=1) a missing file is a failure,
not a skip, so a moved data folder cannot silently switch tests off."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

CANDIDATES = [
    *([Path(os.environ["QUANTCONV_SHARED_DATA"])] if os.environ.get("QUANTCONV_SHARED_DATA") else []),
    Path(__file__).resolve().parents[2] / "shared" / "data",
    Path("/work/shared/data"),
]


def data_file(name: str) -> Path:
    for folder in CANDIDATES:
        if (folder / name).is_file():
            return folder / name
    where = ", ".join(str(c) for c in CANDIDATES)
    if os.environ.get("QUANTCONV_CI"):
        pytest.fail(f"{name} not found in {where}; set QUANTCONV_SHARED_DATA")
    pytest.skip(f"{name} not found in {where}; set QUANTCONV_SHARED_DATA")


def find(name: str) -> Path:
    """The first existing candidate path (or the workplace default, which may not exist)."""
    return next((c / name for c in CANDIDATES if (c / name).is_file()), CANDIDATES[-2] / name)


def require(ok: bool, reason: str, module_level: bool = False) -> None:
    """Skip when a peer/tool is missing; under CI (QUANTCONV_CI=1) fail instead."""
    if ok:
        return
    if os.environ.get("QUANTCONV_CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=module_level)
