"""Atomic file writing: a reader (or a crash) never sees a half-written output."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

from hdme.errors import HdmeError


# The temporary names atomic_path gives: ".STEM.XXXXXXXX.tmp.SUFFIX" (mkstemp's eight random characters).
_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\.[^.]+)?$")


def make_folder(path: str | os.PathLike) -> Path:
    """Create an output folder (and its parents), or say in one line why it cannot hold outputs."""
    path = Path(path)
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise HdmeError(f"{blocker}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HdmeError(f"{path}: cannot create the folder ({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise HdmeError(f"{path}: the folder is not writable")
    return path


def check_output_file(path: str | os.PathLike) -> Path:
    """Refuse in one line an output file that could not be written: a folder stands at its name,
    or a file where one of its folders should be. Commands call it before long work."""
    path = Path(path)
    if path.is_dir():
        raise HdmeError(f"{path}: is a folder; give a file name")
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise HdmeError(f"{blocker}: exists and is not a folder")
    return path


def temp_path_beside(path: str | os.PathLike) -> Path:
    """A new empty file next to ``path``, named like it (``.STEM.XXXXXXXX.tmp.SUFFIX``), with the
    permissions any new file gets, to be renamed over ``path`` once complete."""
    path = check_output_file(path)
    make_folder(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    # mkstemp creates the file 0600; outputs should get the permissions any new file would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` only if the block succeeds.

    The temporary name keeps the suffix so that writers choosing a format by extension
    (OpenCV, numpy) still work.
    """
    tmp_path = temp_path_beside(path)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def remove_stale_temp_files(folder: str | os.PathLike) -> int:
    """Delete the temporary files that writes killed before their rename (kill -9, power loss)
    left anywhere under ``folder``; returns how many. Only for a folder no other process writes to."""
    stale = [p for p in Path(folder).rglob(".*") if p.is_file() and _TEMP_NAME.match(p.name)]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)
