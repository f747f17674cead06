"""The zip framing of files whose bytes are already in the database, for PostgreSQL to assemble.

Registering a LoggedModel whose files are in the database builds the version's ``model_binary``
inside the database: this module writes the headers (entries STORED, with the CRC-32 recorded
when each file was uploaded), PostgreSQL puts the files' pieces between them. The result is an
ordinary zip that archive.py and every other zip reader opens.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_LOCAL = struct.Struct("<4sHHHHHIIIHH")
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
_END = struct.Struct("<4sHHHHIIH")
_VERSION = 20            # 2.0: STORED entries, no zip64
_UTF8 = 0x800            # names are UTF-8
_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01, the zip epoch: the bytes do not depend on upload times
_FILE_MODE = 0o100644 << 16
MAX_ENTRIES = 0xFFFF     # more needs zip64


@dataclass(frozen=True)
class Member:
    name: str   # path inside the model directory, '/'-separated
    size: int
    crc32: int


def local_header(member: Member) -> bytes:
    """The header that precedes a member's bytes."""
    name = member.name.encode("utf-8")
    return _LOCAL.pack(b"PK\x03\x04", _VERSION, _UTF8, 0, 0, _DATE, member.crc32, member.size, member.size,
                       len(name), 0) + name


def trailer(members: list[Member]) -> bytes:
    """The central directory and end record that follow the last member's bytes."""
    records, offset = [], 0
    for m in members:
        name = m.name.encode("utf-8")
        records.append(_CENTRAL.pack(b"PK\x01\x02", _VERSION, _VERSION, _UTF8, 0, 0, _DATE, m.crc32, m.size,
                                     m.size, len(name), 0, 0, 0, 0, _FILE_MODE, offset) + name)
        offset += _LOCAL.size + len(name) + m.size
    directory = b"".join(records)
    return directory + _END.pack(b"PK\x05\x06", 0, 0, len(members), len(members), len(directory), offset, 0)


def zip_size(members: list[Member]) -> int:
    """The size of the zip of ``members``."""
    names = sum(len(m.name.encode("utf-8")) for m in members)
    return sum(m.size for m in members) + len(members) * (_LOCAL.size + _CENTRAL.size) + 2 * names + _END.size
