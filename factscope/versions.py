"""What a result was computed with: the exact versions of the libraries whose numerics it depends on.

`library_versions` feeds ``factscope info``, the demo report's settings and the errors of the KV-cache
seam (`factscope.kv`), so a figure can be reproduced and a library mismatch named.
"""

from __future__ import annotations

import platform
from importlib import metadata

__all__ = ["library_versions"]

PACKAGES: tuple[str, ...] = ("factscope", "torch", "transformers", "transformer-lens")


def library_versions() -> dict[str, str]:
    """Installed versions of factscope, torch, transformers and transformer-lens, and Python's.

    Returns:
        package name -> version string (``"not installed"`` for a missing package), in that order,
        then ``"python"``.

    Cost: negligible (package metadata lookups).
    """
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["python"] = platform.python_version()
    return out
