"""Where spftune keeps its files, and how it writes them so that a crash never leaves a half-written output.

Every output (checkpoints, the converted default model, downloaded data, evaluation results) is written to a temporary
sibling first and moved into place with ``os.replace`` / ``os.rename``, which are atomic on one file system.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ENV_HOME = "SPFTUNE_HOME"


def spftune_home() -> Path:
    """The cache root: ``$SPFTUNE_HOME``, else ``~/.cache/spftune``."""
    return Path(os.environ.get(ENV_HOME) or "~/.cache/spftune").expanduser()


@contextmanager
def atomic_dir(target: str | os.PathLike, *, replace: bool = True) -> Iterator[Path]:
    """Yield an empty temporary directory next to ``target``; on success move it to ``target``.

    On an exception the temporary directory is removed and ``target`` is left as it was. With ``replace=True`` an
    existing ``target`` is swapped out (moved aside, then deleted) only after the new content is complete. With
    ``replace=False`` an existing ``target`` wins: the new content is discarded (another process finished first).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_dir(tmp, target, replace=replace)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _normalize_modes(tmp: Path) -> None:
    # mkdtemp/mkstemp create private (0700/0600) entries; published outputs get the usual umask-based modes.
    mask = _umask()
    for root, dirs, files in os.walk(tmp):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~mask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~mask)
    os.chmod(tmp, 0o777 & ~mask)


def publish_dir(tmp: Path, target: Path, *, replace: bool = True) -> None:
    """Move the finished directory ``tmp`` to ``target`` (see :func:`atomic_dir`)."""
    _normalize_modes(tmp)
    if target.exists():
        if not replace:
            shutil.rmtree(tmp, ignore_errors=True)
            return
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / "content")
        try:
            os.rename(tmp, target)
        except BaseException:
            os.replace(old / "content", target)  # put the previous content back
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.rename(tmp, target)
    except OSError:
        # Lost a race with another process that published the same target; theirs is complete too.
        shutil.rmtree(tmp, ignore_errors=True)
        if not target.exists():
            raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file in the same directory and ``os.replace``."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory and ``os.replace``.

    Readers see the old file or the new one, never a part: a crash leaves at most a hidden ``.NAME.tmp-*`` file,
    which is removed on any exception raised here.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
