"""Datatype spec strings: ``NAME[:key=value,flag,...]`` (e.g. ``sf4:nu=3``, ``int4:asym,group=64``)."""
from __future__ import annotations

from quantconv.errors import QuantconvError


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Split a spec into its lower-cased name and its options (a bare flag maps to "1")."""
    if not isinstance(spec, str) or not spec.strip():
        raise QuantconvError("empty datatype spec; pass a name such as 'sf4' or 'int4:asym' (see `quantconv dtypes`)")
    name, _, rest = spec.strip().partition(":")
    options: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if key in options:
            raise QuantconvError(f"datatype spec '{spec}' sets '{key}' twice; give each option once")
        options[key] = value.strip().lower() if eq else "1"
    return name.strip().lower(), options


def format_spec(name: str, options: dict[str, object]) -> str:
    """The canonical spec: options sorted, flags bare, so equal types print equal strings."""
    parts = []
    for key in sorted(options):
        value = options[key]
        if value is True:
            parts.append(key)
        elif value is False or value is None:
            continue
        else:
            parts.append(f"{key}={value}")
    return name + (":" + ",".join(parts) if parts else "")
