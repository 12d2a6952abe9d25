"""Files in a sweep's storage: a local path or a URI (``s3://``, ``gs://``, ...), read and
written through pyarrow's filesystems, as Ray Tune and Train read and write them.

The layout under ``STORAGE`` (``--storage``, default ``--out``): ``tune/NAME`` (Tune's
experiment and ``sweep_settings.json``), ``train/TRIAL`` (Ray Train's run, one kept checkpoint),
``models/TRIAL`` (the trial's final model, see :mod:`trainer.evaluate`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _fs(uri: str) -> tuple[Any, str]:
    """The pyarrow filesystem of a local path or a URI, and the path on it."""
    import pyarrow.fs

    if "://" not in uri:
        return pyarrow.fs.LocalFileSystem(), str(Path(uri).resolve())
    return pyarrow.fs.FileSystem.from_uri(uri)


def write_text(uri: str, text: str) -> None:
    fs, path = _fs(uri)
    fs.create_dir(path.rpartition("/")[0], recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(text.encode())


def read_text(uri: str) -> str:
    """The text at ``uri``; FileNotFoundError names it when it does not exist."""
    import pyarrow.fs

    fs, path = _fs(uri)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        raise FileNotFoundError(uri)
    with fs.open_input_stream(path) as src:
        return src.read().decode()


def missing_files(uri: str, names: tuple[str, ...]) -> list[str]:
    """Which of ``uri/name`` are not files (all of them when ``uri`` is gone)."""
    import pyarrow.fs

    fs, path = _fs(uri)
    infos = fs.get_file_info([f"{path}/{name}" for name in names])
    return [n for n, i in zip(names, infos, strict=True) if i.type != pyarrow.fs.FileType.File]


def upload_folder(local: Path, uri: str) -> str:
    """Copy the files of the local folder ``local`` to ``uri`` (replacing what is there);
    returns ``uri`` (a local destination made absolute)."""
    import pyarrow.fs

    fs, path = _fs(uri)
    fs.create_dir(path, recursive=True)
    pyarrow.fs.copy_files(
        str(local.resolve()),
        path,
        source_filesystem=pyarrow.fs.LocalFileSystem(),
        destination_filesystem=fs,
    )
    return uri if "://" in uri else path


def local_folder(uri: str, scratch: Path) -> Path:
    """``uri`` as a local folder: itself when it is a local path, else a copy in ``scratch``."""
    import pyarrow.fs

    if "://" not in uri:
        return Path(uri)
    fs, path = _fs(uri)
    scratch.mkdir(parents=True, exist_ok=True)
    pyarrow.fs.copy_files(
        path,
        str(scratch.resolve()),
        source_filesystem=fs,
        destination_filesystem=pyarrow.fs.LocalFileSystem(),
    )
    return scratch


SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of its kept checkpoints


def prune_unregistered_checkpoints(run_uri: str) -> list[str]:
    """Delete the ``checkpoint_*`` folders of a finished Ray Train run (``STORAGE/train/TRIAL``)
    that Ray's checkpoint manager does not keep; returns their names.

    A worker group that dies after uploading a checkpoint and before the controller registers
    it leaves that folder behind: Ray never deletes it, and for XLS-R it is ~5 GB. Call this
    only once the run's ``fit()`` has returned. Nothing is deleted when the manager's record
    cannot be read or lists no checkpoint.
    """
    import json

    import pyarrow.fs

    try:
        state = json.loads(read_text(f"{run_uri}/{SNAPSHOT}"))
        kept = {r["checkpoint_dir_name"] for r in state["checkpoint_results"]}
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return []
    if not kept:
        return []
    fs, path = _fs(run_uri)
    entries = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    stale = [
        e
        for e in entries
        if e.type == pyarrow.fs.FileType.Directory
        and e.base_name.startswith("checkpoint_")
        and e.base_name not in kept
    ]
    for entry in stale:
        fs.delete_dir(entry.path)
    return [e.base_name for e in stale]


def delete_folder(uri: str) -> None:
    """Delete the folder ``uri`` and everything in it (nothing when it is gone)."""
    import pyarrow.fs

    fs, path = _fs(uri)
    if fs.get_file_info(path).type == pyarrow.fs.FileType.Directory:
        fs.delete_dir(path)


def subfolders(uri: str) -> list[str]:
    """The folders directly in ``uri``, by name ([] when it does not exist)."""
    import pyarrow.fs

    fs, path = _fs(uri)
    entries = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    return sorted(e.base_name for e in entries if e.type == pyarrow.fs.FileType.Directory)


def folder_bytes(local: Path) -> int:
    """The bytes of the files under the local folder ``local``."""
    return sum(p.stat().st_size for p in local.rglob("*") if p.is_file())
