"""Content-addressed, atomically written caches under ``data/cache``.

Every cached result is keyed by a SHA-256 of its full configuration (a JSON-able dict, which always includes
the library version), written to a temporary file and renamed into place, and validated on load: a file that
cannot be read back completely is deleted and recomputed, never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__

DEFAULT_CACHE_DIR = Path("data") / "cache"


def project_root(start: str | Path | None = None) -> Path:
    """The folder holding ``pyproject.toml`` and ``hesslib/`` at or above ``start`` (default: the current directory).

    Relative data, cache and figure folders then mean the same from ``notebooks/`` (JupyterLab) and from the
    repository root (papermill). Returns ``start`` itself when there is none (hesslib used outside its
    repository).
    """
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").exists() and (folder / "hesslib").is_dir():
            return folder
    return here


def config_key(config: dict[str, Any]) -> str:
    """Stable 16-hex-digit key of a configuration (sorted-key JSON plus the library version)."""
    payload = json.dumps({"hesslib": __version__, **config}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class CacheWriteError(OSError):
    """A cache (or data) folder cannot be created or written; the message is one line naming it and the fix."""


# atomic_write's temporaries: ".<final name>.<mkstemp's 8 random characters>.tmp"
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path`` and rename it into place only on success.

    Whatever ends the write (an error, Ctrl-C), the temporary is removed and nothing is left at ``path``; only a
    hard kill can leave the temporary ``.<name>.<random>.tmp`` behind (see :func:`remove_stale_temporaries`).

    Args:
        path: the final path.
        write: writes the whole content to the path it is given.

    Raises:
        CacheWriteError: if the folder of ``path`` cannot be created or a file cannot be created in it.
    """
    path = Path(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _write_error(folder, exc) from exc
    try:
        os.close(fd)
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_error(folder: Path, exc: OSError) -> CacheWriteError:
    """The one-line error for an unwritable ``folder`` (keeps ``exc``'s errno)."""
    if folder.exists() and not folder.is_dir():
        reason = "it is a file, not a folder"
    else:
        reason = exc.strerror or str(exc)
        if exc.filename is not None and Path(exc.filename) in folder.parents:  # a folder above it failed
            reason += f": {exc.filename}"
    error = CacheWriteError(
        f"cannot write to the cache folder {folder}/ ({reason}); make it writable or pass cache_dir=None "
        f"(no cache) / `-p cache_dir <writable folder>`"
    )
    error.errno = exc.errno
    return error


def remove_stale_temporaries(folder: str | Path, *, min_age_s: float = 0.0) -> int:
    """Delete the temporaries a killed :func:`atomic_write` left in ``folder`` (not its subfolders).

    Only files named like its temporaries, ``.<name>.<8 random characters>.tmp``, are removed; cache entries and
    other files are kept. Call it only while no other process writes to ``folder``, or with ``min_age_s`` longer
    than any write takes (a temporary being written now is younger).

    Args:
        folder: the folder to clean; a missing folder has nothing to remove.
        min_age_s: remove only temporaries last modified at least this many seconds ago.

    Returns:
        How many files were removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for candidate in folder.glob(".*.tmp"):
        if _TEMPORARY.fullmatch(candidate.name) and candidate.is_file() and not candidate.is_symlink():
            try:
                if min_age_s and time.time() - candidate.stat().st_mtime < min_age_s:
                    continue
                candidate.unlink()
            except FileNotFoundError:  # removed meanwhile
                continue
            removed += 1
    return removed


def save_torch(path: Path, obj: Any) -> None:
    """Atomically ``torch.save`` an object."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_torch(path: Path) -> Any | None:
    """Load a ``torch.save`` file; a missing file gives None, a corrupt one is deleted and gives None."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # truncated / corrupt: recompute instead of trusting it
        path.unlink(missing_ok=True)
        return None


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Atomically write a compressed ``.npz``."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)

    atomic_write(path, write)


def load_npz(path: Path, required: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """Load every array of an ``.npz``; None (and the file removed) if it is missing a key or corrupt."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with np.load(path) as npz:
            arrays = {name: npz[name] for name in npz.files}
        if not all(name in arrays for name in required):
            raise KeyError("missing arrays")
        return arrays
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        path.unlink(missing_ok=True)
        return None


def cached(
    namespace: str,
    config: dict[str, Any],
    compute: Callable[[], Any],
    *,
    cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
    validate: Callable[[Any], bool] | None = None,
) -> Any:
    """Return ``compute()``, memoised in ``cache_dir/<namespace>-<key>.pt`` (``cache_dir=None`` disables caching).

    ``namespace`` names what is cached ("train", "eigen", "losses", ...) and is part of the key; a stored value
    is used only if its stored ``config`` equals ``config`` and ``validate`` (if given) accepts it.
    """
    if cache_dir is None:
        return compute()
    path = Path(cache_dir) / f"{namespace}-{config_key({'kind': namespace, **config})}.pt"
    obj = load_torch(path)
    if obj is not None and isinstance(obj, dict) and obj.get("config") == config:
        if validate is None or validate(obj["value"]):
            return obj["value"]
    start = time.perf_counter()
    value = compute()
    _log_compute(namespace, time.perf_counter() - start, path.name)
    save_torch(path, {"config": config, "value": value})
    return value


COMPUTE_LOG_ENV = "HESSLIB_COMPUTE_LOG"


def _log_compute(namespace: str, seconds: float, name: str) -> None:
    """Append ``{"namespace", "seconds", "file"}`` as one JSON line to ``$HESSLIB_COMPUTE_LOG``, when it is set.

    The paper runner sets it to learn, per notebook, which cached computations its time went to.
    """
    log = os.environ.get(COMPUTE_LOG_ENV)
    if log:
        with open(log, "a") as fh:
            fh.write(json.dumps({"namespace": namespace, "seconds": round(seconds, 3), "file": name}) + "\n")
