"""Hostile files for the tests, made by hand (imported as ``from bombs import BOMB_PNG``)."""

from __future__ import annotations

import struct
import zlib


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


BOMB_PNG = (
    b"\x89PNG\r\n\x1a\n"
    + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))  # 20000 x 20000 RGB, 8 bits
    + _png_chunk(b"IDAT", zlib.compress(b""))
    + _png_chunk(b"IEND", b"")
)  # 65 bytes declaring 400 M pixels: a decompression bomb, refused from its header
