"""File helpers with no dependency on the rest of the package: atomic writes, content hashes, checked reads, and the
checks that a file can be read (:func:`check_readable_file`) or a folder written (:func:`check_writable_dir`).

The package's one content hasher of tensors is :func:`tensor_sha256` (checkpoints, exports, the image store's
folder key); :func:`file_sha256` hashes a file's bytes.

Every artefact the package writes goes through :func:`atomic_path` or :func:`atomic_dir`: it is written under a
temporary sibling name and renamed into place, so an interrupted or failed write never leaves half a file.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import Tensor

from rece_lightning.errors import RECEError

__all__ = ["CACHE_DIR_ENV", "atomic_dir", "atomic_path", "cache_dir", "check_readable_file", "check_writable_dir",
           "file_sha256", "read_csv", "tensor_sha256"]

CACHE_DIR_ENV = "RECE_CACHE_DIR"
"""Environment variable: the package's cache folder (evaluations, robust searches, generated testbed prompts)."""


def cache_dir() -> Path:
    """The package's cache folder: ``$RECE_CACHE_DIR``, else ``$XDG_CACHE_HOME/rece-lightning``, else
    ``~/.cache/rece-lightning``. The evaluation cache, the robust ``auto`` search (``robust/``) and the generated
    testbed prompt sets (``testbed-prompts/``) live under it."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "rece-lightning"


def _default_mode(directory: bool) -> int:
    """Permissions a normally created file/folder would get (``mkstemp``/``mkdtemp`` create private ones)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it onto ``path`` on success, delete it on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _default_mode(directory=False))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Like :func:`atomic_path` for a folder: filled under a temporary name, swapped in at the end."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, _default_mode(directory=True))
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (recorded in evaluation protocols, e.g. of detector weights)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def tensor_sha256(tensors: Mapping[str, Tensor], header: str = "") -> str:
    """SHA-256 over ``header`` then the sorted names, dtypes, shapes and bytes of ``tensors`` (exact: any changed
    value, dtype, shape or name changes it). ``header`` binds other inputs (e.g. settings as JSON) to the hash."""
    digest = hashlib.sha256(header.encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def check_readable_file(path: str | Path, what: str, hint: str) -> None:
    """``path`` is an existing, readable, non-empty regular file (a symlink to one is fine).

    A FIFO, a device or a socket would block or never end when read, so they are refused before any read.

    Raises:
        RECEError: it is missing, a symlink loop or dangling symlink, a folder, not a regular file, empty or
            unreadable.
    """
    p = Path(path).expanduser()
    try:
        info = os.stat(p)  # follows symlinks
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise RECEError(f"{what} {p} is a symlink loop; point it at a file ({hint})") from err
        if os.path.islink(p):
            raise RECEError(f"{what} {p} is a symlink to {os.readlink(p)}, which does not exist; {hint}") from err
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            raise RECEError(f"{what} {p} does not exist; {hint}") from err
        raise RECEError(f"{what} {p} cannot be read ({err.strerror or err}); check its permissions") from err
    if stat.S_ISDIR(info.st_mode):
        raise RECEError(f"{what} {p} is a folder; {hint}")
    if not stat.S_ISREG(info.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode) else "a device"
                if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "a socket"
                if stat.S_ISSOCK(info.st_mode) else "not a regular file")
        raise RECEError(f"{what} {p} is {kind}, not a file; {hint}")
    if info.st_size == 0:
        raise RECEError(f"{what} {p} is empty; {hint}")
    try:
        with open(p, "rb") as handle:
            handle.read(1)
    except OSError as err:
        raise RECEError(f"{what} {p} cannot be read ({err.strerror or err}); check its permissions") from err


MIN_FREE_BYTES = 64 * 2**20
"""A folder a run writes to needs at least this much free space (one stage's checkpoint and records)."""


def check_writable_dir(path: str | Path, what: str) -> Path:
    """``path`` is, or can be created as, a folder this process can write to; nothing is left behind.

    Raises:
        RECEError: ``path`` (or one of its parents) is a file, or the nearest existing folder is not writable.
    """
    path = Path(path).expanduser().absolute()
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise RECEError(f"{what} {path} cannot be created: {existing} is a file, not a folder; choose another folder")
    try:  # the only reliable test (permissions, read-only file systems, root squash …): create and remove a file
        fd, probe = tempfile.mkstemp(prefix=".rece-write-test-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise RECEError(f"{what} {path} is not writable ({existing}: {reason}); choose a folder you can write to") from err
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        raise RECEError(f"{what} {path} has only {free // 2**20} MiB free on its disk ({existing}); free disk space or "
                        "choose a folder on another disk")
    return path


def _decode_error(path: Path, err: UnicodeDecodeError, raw: bytes) -> RECEError:
    line = raw.count(b"\n", 0, err.start) + 1
    return RECEError(
        f"{path} is not UTF-8 text (byte 0x{raw[err.start]:02x} on line {line}); save it as UTF-8, "
        f"e.g. iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8.csv"
    )


def read_csv(path: str | Path, what: str = "CSV file") -> tuple[list[str], list[dict[str, str]]]:
    """The columns and rows of a UTF-8 CSV (a byte-order mark is accepted), or one :class:`RECEError` naming the
    problem: the file is missing, not a regular file (see :func:`check_readable_file`), empty, not UTF-8, has a quote
    that is never closed (named by the line where it opens), no header, a repeated column name (one unnamed column,
    such as a saved pandas index, is fine), or a row with more fields than the header."""
    path = Path(path).expanduser()
    check_readable_file(path, what, "give the path of a CSV file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise _decode_error(path, err, raw) from err
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    records: list[tuple[int, list[str]]] = []  # (line where the record starts, fields)
    start = 1
    try:
        for fields in reader:
            records.append((start, fields))
            start = reader.line_num + 1
    except csv.Error as err:
        if "unexpected end of data" in str(err) or reader.line_num > start:
            raise RECEError(f"{path}, line {start}: a quote (\") opened on this line is never closed; close it, or "
                            "double quotes inside a quoted field (\"\")") from err
        raise RECEError(f"{path}, line {start}: not valid CSV ({err}); save it as comma-separated text") from err
    records = [(line, fields) for line, fields in records if fields]  # blank lines
    if not records:
        raise RECEError(f"{path} has no header line; the first line names the columns, e.g. prompt,evaluation_seed")
    (_, header), body = records[0], records[1:]
    columns = [c.strip() for c in header]
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        name = repr(repeated[0]) if repeated[0] else "without a name"
        raise RECEError(f"{path}, line 1: the column {name} appears more than once; rename or remove the copy")
    rows = []
    for line, fields in body:
        if len(fields) > len(columns):
            raise RECEError(f"{path}, line {line}: {len(fields)} fields but the header names {len(columns)} columns; "
                            "quote fields that hold commas")
        rows.append({c: (fields[i] if i < len(fields) else "") for i, c in enumerate(columns)})
    return columns, rows
