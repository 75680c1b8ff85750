"""Public data files: where they come from, their SHA-256, and how a loader finds them.

A loader asks for a :class:`DataSource` through :func:`fetch`, which looks in this order:

1. the data directory (``data_dir=`` / ``--data-dir``, else ``$SPFTUNE_DATA``), at ``source.relpath``;
2. the download cache, ``$SPFTUNE_HOME/data/<relpath>``;
3. the canonical upstream URL, only when the caller passed ``allow_download=True``: the bytes are checked against
   the pinned SHA-256 before anything is written, and written atomically into the cache.

Every file is checked against its SHA-256, wherever it was found: a numbers-bearing data set that silently changed
would make results incomparable. To evaluate on a modified copy, load it as a user file (``file:PATH``).
Sources with no pinned checksum (gated or licence-restricted sets) are read from the data directory only.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from spftune.models.storage import spftune_home, write_bytes_atomic

ENV_DATA = "SPFTUNE_DATA"


@dataclass(frozen=True)
class DataSource:
    """One public data file: its path under a data directory, upstream URL and SHA-256."""

    relpath: str  # e.g. "advbench/advbench.json"
    url: str | None = None
    sha256: str | None = None
    license: str = ""
    how_to_get: str = ""  # shown when the file is missing and cannot be downloaded


@dataclass
class LoadContext:
    """What a task loader gets: where to look for data and whether downloading is allowed.

    ``files`` collects ``{relpath, path, sha256}`` of every file read, for the provenance in ``eval.json``.
    """

    data_dir: Path | None = None
    allow_download: bool = False
    files: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def create(cls, data_dir: str | os.PathLike | None = None, allow_download: bool = False) -> LoadContext:
        return cls(data_dir=resolve_data_dir(data_dir), allow_download=allow_download)

    def path(self, source: DataSource) -> Path:
        path = fetch(source, self.data_dir, allow_download=self.allow_download)
        self.files.append({"relpath": source.relpath, "path": str(path), "sha256": sha256_file(path)})
        return path


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """``data_dir`` if given, else ``$SPFTUNE_DATA`` if set, else None. A given directory must exist."""
    if data_dir is None:
        env = os.environ.get(ENV_DATA)
        if not env:
            return None
        data_dir, origin = env, f"${ENV_DATA}"
    else:
        origin = "data_dir"
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"data directory {path} (from {origin}) does not exist; pass an existing directory")
    return path


def data_cache_dir() -> Path:
    return spftune_home() / "data"


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ChecksumError(ValueError):
    """A data file whose SHA-256 differs from the pinned one."""


def _check(path: Path, source: DataSource) -> Path:
    if source.sha256 is None:
        return path
    actual = sha256_file(path)
    if actual != source.sha256:
        raise ChecksumError(
            f"{path} has SHA-256 {actual}, expected {source.sha256} for {source.relpath}; replace it with the "
            "upstream file, or evaluate your modified copy as file:PATH"
        )
    return path


def download(url: str, *, timeout: float = 60.0) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "spftune"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ConnectionError(f"could not download {url}: {reason}; check the network or use --data-dir") from None


def fetch(source: DataSource, data_dir: Path | None = None, *, allow_download: bool = False) -> Path:
    """Local path of ``source`` (see the module docstring for the search order). Raises if it cannot be found."""
    if data_dir is not None:
        local = data_dir / source.relpath
        if local.is_file():
            return _check(local, source)
    cached = data_cache_dir() / source.relpath
    if cached.is_file() and source.sha256 is not None:
        return _check(cached, source)
    where = f"data directory {data_dir}" if data_dir is not None else f"no data directory (set --data-dir or ${ENV_DATA})"
    if source.url is None or source.sha256 is None:
        raise FileNotFoundError(
            f"{source.relpath} not found ({where}); {source.how_to_get or 'put the file there'}"
        )
    if not allow_download:
        raise FileNotFoundError(
            f"{source.relpath} not found ({where}, nor in the cache {data_cache_dir()}); pass a data directory that "
            f"holds it, or allow downloading it (allow_download=True / --download) from {source.url}"
        )
    data = download(source.url)
    actual = hashlib.sha256(data).hexdigest()
    if actual != source.sha256:
        raise ChecksumError(
            f"download of {source.url} has SHA-256 {actual}, expected {source.sha256}; nothing was cached. The "
            "upstream file changed or the download was corrupted: fetch it by hand and pass --data-dir"
        )
    return write_bytes_atomic(cached, data)
