"""Shared helper for tests that sweep the registry: every default datatype plus a test's own variants."""
from __future__ import annotations

from quantconv.formats.registry import list_dtypes


def registry_specs(variants: list[str]) -> list[str]:
    """The default row of every datatype, then `variants`, without repeats, in that order."""
    return list(dict.fromkeys([d.spec for d in list_dtypes()] + variants))
