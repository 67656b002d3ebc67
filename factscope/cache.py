"""The on-disk cache: where it lives, and how things get into it atomically.

Everything expensive that factscope derives (dequantised models, key statistics) goes under
`cache_dir()`: ``$FACTSCOPE_CACHE`` if set, else ``~/.cache/factscope``. Entries are written to a
temporary name next to their final place and renamed into it, so a crash or a concurrent reader
never sees a half-written entry. A directory entry counts as complete only once its manifest
(``factscope.json``) exists, and the manifest is written last.

Keys are built with `key_digest` from a JSON-able dict of everything that determines the entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

__all__ = ["cache_dir", "key_digest", "atomic_file", "atomic_dir", "write_json", "read_json", "MANIFEST"]

MANIFEST = "factscope.json"


def cache_dir(*parts: str) -> Path:
    """The cache folder (``$FACTSCOPE_CACHE`` or ``~/.cache/factscope``), joined with ``parts``.

    Args:
        *parts: sub-folders and file name under the cache root, e.g. ``cache_dir("stats")``.

    Returns:
        The path; nothing is created.

    Cost: negligible (no file system access).
    """
    root = os.environ.get("FACTSCOPE_CACHE") or str(Path.home() / ".cache" / "factscope")
    return Path(root).expanduser().joinpath(*parts)


def key_digest(key: dict[str, Any], n: int = 16) -> str:
    """A short stable hex digest of a JSON-able key (sorted keys, so order does not matter)."""
    blob = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; on success it is renamed onto ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``path`` as a whole, on error it is removed.

    Write the manifest (``MANIFEST``) last inside it: readers treat a folder without one as
    incomplete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))


def read_json(path: str | os.PathLike) -> Any | None:
    """Read JSON, or ``None`` when the file is missing or not valid JSON (a damaged entry)."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
