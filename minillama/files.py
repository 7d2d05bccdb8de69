"""Opening the files of a checkpoint folder safely: regular files only, with size limits.

Every reader in minillama opens its files through these helpers, so that a FIFO or a
device in place of ``config.json`` cannot hang the process, a multi-gigabyte
``config.json`` is refused before it is read, and a name taken from a file (a shard in an
index) cannot lead outside the checkpoint folder. Symbolic links are followed: the
Hugging Face cache keeps every file of a snapshot as a link into its ``blobs`` folder.
"""

from __future__ import annotations

import json
import os
import stat

MiB = 2**20
JSON_LIMIT = 16 * MiB  # config.json, params.json, tokenizer_config.json, an index: a few KiB in practice


def check_regular_file(path: str, error=OSError) -> int:
    """The size of ``path`` if it is a regular file (after following links); else raise ``error``.

    A missing file is a ``FileNotFoundError``; a folder, FIFO, socket or device is ``error``.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"file not found: {path}") from None
    except OSError as problem:
        raise error(f"{path}: cannot read ({problem.strerror or problem})") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file (a FIFO, socket or device)"
        raise error(f"{path}: is {kind}")
    return info.st_size


def open_regular_file(path: str, error=OSError):
    """Open ``path`` for binary reading, refusing anything but a regular file.

    The file is opened without blocking and checked again on the open descriptor, so a
    FIFO swapped in after the first check cannot hang the read either.
    """
    check_regular_file(path, error)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as problem:
        raise error(f"{path}: cannot open ({problem.strerror or problem})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise error(f"{path}: is not a regular file")
    return os.fdopen(fd, "rb")


def read_limited(path: str, limit: int, error=OSError, what: str = "file") -> bytes:
    """The whole content of a regular file of at most ``limit`` bytes."""
    size = check_regular_file(path, error)
    if size > limit:
        raise error(f"{path}: {size} bytes is too large for a {what} (at most {limit})")
    with open_regular_file(path, error) as f:
        data = f.read(limit + 1)
    if len(data) > limit:  # the file grew after the check
        raise error(f"{path}: too large for a {what} (at most {limit} bytes)")
    return data


def _no_constants(name: str):
    raise ValueError(f"{name} is not valid JSON")


def read_json_object(path: str, error=ValueError, limit: int = JSON_LIMIT) -> dict:
    """A JSON file holding an object; a missing, oversized or malformed file is an error naming it.

    NaN and Infinity, which Python's json module accepts but JSON does not, are refused.
    """
    data = read_limited(path, limit, error, "JSON file")
    try:
        raw = json.loads(data.decode("utf-8"), parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError) as problem:  # json.JSONDecodeError is a ValueError
        raise error(f"{path}: not valid JSON ({problem})") from None
    except RecursionError:
        raise error(f"{path}: not valid JSON (nested too deeply)") from None
    if not isinstance(raw, dict):
        raise error(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return raw


def inside_folder(folder: str, name, error=ValueError, source: str = "") -> str:
    """``folder/name`` for a file name read from a file, refusing names that leave the folder.

    Absolute paths and ``..`` components are refused; links inside the folder are not
    judged here (they are followed when the file is opened, as the Hugging Face cache needs).
    """
    if not isinstance(name, str) or not name or "\0" in name:
        raise error(f"{source or folder}: invalid file name {name!r}")
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":"):
        raise error(f"{source or folder}: refusing the file name {name!r}, which points outside {folder}")
    return os.path.join(folder, *[p for p in parts if p not in ("", ".")])
