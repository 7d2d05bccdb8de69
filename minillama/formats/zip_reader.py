"""Reading the zip archive of a ``.pth`` file, refusing the tricks a hostile zip can play.

Python's :mod:`zipfile` parses the central directory (the table of contents at the end of
the file, zip64 included); everything after that is checked here before a byte is used:

* no member is encrypted, and each is stored or deflated (no other compression);
* member names are relative and stay inside the archive (no ``..``, no absolute path),
  and no name appears twice;
* each member's local header (the copy of its entry just before its bytes) agrees with
  the central directory on name, compression and sizes, and the members' bytes lie
  inside the file without overlapping one another;
* a compressed member is inflated to at most its declared size and at most a cap, so a
  259 KiB deflate bomb that would inflate to 256 MiB is refused after reading a little.

Stored members (a tensor's raw bytes) are memory-mapped at their checked offset.
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from ..errors import CheckpointError
from ..files import open_regular_file

MiB = 2**20
PICKLE_LIMIT = 64 * MiB  # the pickle of a state dict: a few hundred KiB for Llama 2 70B
LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # signature ... name length, extra length: 30 bytes
METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
ENCRYPTED, DATA_DESCRIPTOR = 0x1, 0x8  # general-purpose flag bits
ZIP64_MARK = 0xFFFFFFFF  # a 32-bit size field saying "see the zip64 extra field"


@dataclass(frozen=True)
class Member:
    """One checked archive member: where its bytes are and how they are stored."""

    name: str
    method: int
    compressed_size: int
    size: int
    crc: int
    data_offset: int  # where its (possibly compressed) bytes begin in the file


class ZipReader:
    """The checked members of a zip file; use as a context manager."""

    def __init__(self, path: str):
        self.path = path
        self.file = open_regular_file(path, CheckpointError)
        self.size = os.fstat(self.file.fileno()).st_size
        try:
            self.members = self._read_members()
        except BaseException:
            self.file.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.file.close()

    def _read_members(self) -> dict[str, Member]:
        try:
            with zipfile.ZipFile(self.file) as archive:
                infos, directory_start = archive.infolist(), archive.start_dir
        except Exception as error:  # zipfile raises BadZipFile, but also struct/unicode/overflow errors
            raise CheckpointError(f"{self.path}: not a PyTorch zip checkpoint ({error}); "
                                  "old non-zip .pth files are not supported") from None
        members, taken = {}, []
        for info in infos:
            member = self._check_member(info)
            if member.name in members:
                raise CheckpointError(f"{self.path}: zip member {member.name[:100]!r} appears twice")
            members[member.name] = member
            taken.append((info.header_offset, member.data_offset + member.compressed_size, member.name))
        check_no_overlap(self.path, taken, min(directory_start, self.size))
        return members

    def _check_member(self, info: zipfile.ZipInfo) -> Member:
        shown = info.filename if len(info.filename) <= 100 else info.filename[:97] + "..."
        where = f"{self.path}: zip member {shown!r}"
        check_member_name(where, info.filename)
        if info.flag_bits & ENCRYPTED:
            raise CheckpointError(f"{where} is encrypted")
        if info.compress_type not in METHODS:
            raise CheckpointError(f"{where} uses compression method {info.compress_type}; "
                                  "only stored and deflate are read")
        if info.header_offset < 0:  # zipfile shifts offsets when the directory is not where the end record says
            raise CheckpointError(f"{where}: its offset is before the start of the file (truncated or corrupt zip)")
        self.file.seek(info.header_offset)
        header = self.file.read(LOCAL_HEADER.size)
        if len(header) < LOCAL_HEADER.size:
            raise CheckpointError(f"{where}: its local header is past the end of the file")
        signature, _, flags, method, _, _, _, compressed, size, name_length, extra_length = LOCAL_HEADER.unpack(header)
        raw_name = self.file.read(name_length)
        extra = self.file.read(extra_length)
        if signature != b"PK\x03\x04" or len(raw_name) < name_length or len(extra) < extra_length:
            raise CheckpointError(f"{where}: corrupt local header")
        if raw_name.decode("utf-8", "replace") != info.filename and raw_name.decode("cp437") != info.filename:
            raise CheckpointError(f"{where}: the local header names it {raw_name[:100].decode('utf-8', 'replace')!r}")
        if method != info.compress_type:
            raise CheckpointError(f"{where}: the local header says compression {method}, "
                                  f"the central directory {info.compress_type}")
        deferred = bool(flags & DATA_DESCRIPTOR)  # sizes written after the data: the local ones may be 0
        local_sizes = local_zip64_sizes(extra, size, compressed)
        if not (sizes_agree(local_sizes, (info.file_size, info.compress_size), deferred)):
            raise CheckpointError(f"{where}: the local header's sizes (uncompressed, compressed) {local_sizes} "
                                  f"disagree with the central directory's {(info.file_size, info.compress_size)}")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise CheckpointError(f"{where} is stored but its two sizes differ")
        data_offset = info.header_offset + LOCAL_HEADER.size + name_length + extra_length
        return Member(info.filename, info.compress_type, info.compress_size, info.file_size, info.CRC, data_offset)

    def read(self, name: str, limit: int = PICKLE_LIMIT) -> bytes:
        """The content of a member, at most ``limit`` bytes once inflated; its CRC is checked."""
        member = self.members[name]
        where = f"{self.path}: zip member {name!r}"
        if member.size > limit:
            raise CheckpointError(f"{where} declares {member.size} bytes, more than the {limit} allowed")
        if member.compressed_size > limit + 1024:  # deflate adds at most a few bytes to incompressible data
            raise CheckpointError(f"{where}: {member.compressed_size} compressed bytes is more than allowed")
        self.file.seek(member.data_offset)
        data = self.file.read(member.compressed_size)
        if member.method == zipfile.ZIP_DEFLATED:
            data = inflate(where, data, member.size)
        if len(data) != member.size:
            raise CheckpointError(f"{where} holds {len(data)} bytes, not the {member.size} declared")
        if zlib.crc32(data) != member.crc:
            raise CheckpointError(f"{where} fails its CRC check (corrupt)")
        return data

    def memmap(self, name: str, dtype, count: int, where: str = "") -> np.ndarray:
        """A read-only memory map of a stored member holding ``count`` values of ``dtype``.

        where: how to name the member in error messages (default: the file and the member).
        """
        member = self.members[name]
        where = f"{where or self.path} (zip member {name!r})"
        if member.method != zipfile.ZIP_STORED:
            raise CheckpointError(f"{where} is compressed; tensor data must be stored")
        if member.size != count * np.dtype(dtype).itemsize:
            raise CheckpointError(f"{where} holds {member.size} bytes, not the "
                                  f"{count} x {np.dtype(dtype).itemsize} its storage declares")
        if count == 0:
            return np.zeros(0, dtype=dtype)
        return np.memmap(self.file, dtype=dtype, mode="r", offset=member.data_offset, shape=(count,))


def check_member_name(where: str, name: str) -> None:
    """Refuse member names that are absolute or climb out of the archive."""
    parts = name.replace("\\", "/").split("/")
    if not name or "\0" in name or name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":"):
        raise CheckpointError(f"{where}: refusing a member name that is absolute or contains '..'")


def local_zip64_sizes(extra: bytes, size: int, compressed: int) -> tuple[int, int]:
    """(uncompressed, compressed) size from a local header, taking them from its zip64 field when marked."""
    if size != ZIP64_MARK and compressed != ZIP64_MARK:
        return size, compressed
    at = 0
    while at + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, at)
        if kind == 1 and length >= 16 and at + 4 + length <= len(extra):
            return struct.unpack_from("<QQ", extra, at + 4)  # local zip64 fields: both sizes, in this order
        at += 4 + length
    return size, compressed


def sizes_agree(local: tuple[int, int], central: tuple[int, int], deferred: bool) -> bool:
    return all(a == b or (deferred and a == 0) for a, b in zip(local, central))


def check_no_overlap(path: str, spans: list[tuple[int, int, str]], end: int) -> None:
    """Every member (local header to last byte) lies before the central directory, none overlapping."""
    previous_end, previous_name = 0, None
    for start, stop, name in sorted(spans):
        if stop > end:
            raise CheckpointError(f"{path}: zip member {name!r} reaches past the end of the archive data (truncated?)")
        if start < previous_end:
            raise CheckpointError(f"{path}: zip members {previous_name!r} and {name!r} overlap")
        previous_end, previous_name = stop, name


def inflate(where: str, data: bytes, size: int) -> bytes:
    """Raw-deflate ``data``, producing at most ``size`` + 1 bytes whatever the stream claims."""
    inflater = zlib.decompressobj(-15)
    try:
        out = inflater.decompress(data, size + 1)
    except zlib.error as error:
        raise CheckpointError(f"{where}: corrupt deflate data ({error})") from None
    if len(out) > size:
        raise CheckpointError(f"{where} inflates to more than the {size} bytes declared (a zip bomb?)")
    return out
