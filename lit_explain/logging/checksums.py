"""CRC-32C of TensorBoard's event records, vectorized with numpy.

TensorBoard writes every event as a TFRecord (length, masked CRC-32C of the length, data,
masked CRC-32C of the data). Without TensorFlow its writer computes the checksums in pure
Python, a byte at a time: about 3 ms for the 36 KB PNG of a digits grid, in the writer's
thread, where it holds the GIL and stalls the training loop for as long. :func:`crc32c`
computes the same values about ten times faster: the data is cut into lanes that are
checksummed side by side, one numpy step per byte position, and the lanes' checksums are
combined pairwise (a CRC is linear: the checksum of ``a + b`` is ``a``'s carried through
``len(b)`` zero bytes, combined with ``b``'s).

:func:`use_fast_checksums` gives one ``SummaryWriter``'s record writer these checksums; the
bytes it writes are the same (the tests read them back through TensorBoard's reader, which
checks every checksum). Other writers in the process are left alone.
"""

from __future__ import annotations

import functools
import struct
import types

import numpy as np

__all__ = ["crc32c", "masked_crc32c", "use_fast_checksums"]

_POLY = 0x82F63B78  # CRC-32C (Castagnoli), bit-reflected
_MASK_DELTA = 0xA282EAD8
_LANE = 16  # bytes per lane
#: Below this many bytes the byte-at-a-time loop is faster than the numpy set-up.
SMALL = 2048


def _byte_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(_POLY), table >> 1).astype(np.uint32)
    return table


_TABLE = _byte_table()
_TABLE_LIST = _TABLE.tolist()
#: Each 32-bit register value as the XOR of its four bytes in place: (4, 256).
_BASIS = np.arange(256, dtype=np.uint32)[None, :] << (8 * np.arange(4, dtype=np.uint32))[:, None]


def _step_zero_bytes(register: np.ndarray, count: int) -> np.ndarray:
    for _ in range(count):
        register = _TABLE[register & 0xFF] ^ (register >> 8)
    return register


def _apply(tables: np.ndarray, register: np.ndarray) -> np.ndarray:
    """A linear map on 32-bit registers given by its action on each byte position."""
    return (tables[0][register & 0xFF] ^ tables[1][(register >> 8) & 0xFF]
            ^ tables[2][(register >> 16) & 0xFF] ^ tables[3][register >> 24])


@functools.cache
def _zeros(length: int, doublings: int) -> np.ndarray:
    """The tables of "carry the register through ``length * 2**doublings`` zero bytes"."""
    if doublings == 0:
        return _step_zero_bytes(_BASIS.copy(), length)
    half = _zeros(length, doublings - 1)
    return _apply(half, _apply(half, _BASIS))


def _small(data: bytes, register: int) -> int:
    table = _TABLE_LIST
    for byte in data:
        register = table[(register ^ byte) & 0xFF] ^ (register >> 8)
    return register


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """The CRC-32C of ``data`` (initial value and final XOR ``0xFFFFFFFF``)."""
    view = memoryview(data).cast("B")
    n = len(view)
    if n < SMALL:
        return _small(view, 0xFFFFFFFF) ^ 0xFFFFFFFF
    lanes = -(-n // _LANE)
    levels = (lanes - 1).bit_length()
    padded = np.zeros((1 << levels) * _LANE, np.uint8)  # zeros in front change nothing
    padded[len(padded) - n:] = np.frombuffer(view, np.uint8)  # from a zero register
    columns = padded.reshape(-1, _LANE)
    register = np.zeros(len(columns), np.uint32)
    for j in range(_LANE):  # every lane's register from 0, side by side
        register = _TABLE[(register ^ columns[:, j]) & 0xFF] ^ (register >> 8)
    for level in range(levels):  # neighbours combined: left carried through right's length
        register = _apply(_zeros(_LANE, level), register[0::2]) ^ register[1::2]
    # the initial 0xFFFFFFFF carried through the n bytes, by the bits of n
    initial = np.array([0xFFFFFFFF], np.uint32)
    bit = 0
    while n >> bit:
        if (n >> bit) & 1:
            initial = _apply(_zeros(1, bit), initial)
        bit += 1
    return (int(register[0]) ^ int(initial[0])) ^ 0xFFFFFFFF


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
    """TFRecord's masked checksum: the CRC-32C rotated right by 15 bits plus a constant."""
    x = crc32c(data)
    return (((x >> 15) | (x << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def _write_record(self: object, data: bytes) -> None:
    """What ``RecordWriter.write`` writes (a TFRecord), with :func:`masked_crc32c`."""
    header = struct.pack("<Q", len(data))
    self._writer.write(header + struct.pack("<I", masked_crc32c(header)) + data
                       + struct.pack("<I", masked_crc32c(data)))


def use_fast_checksums(writer: object) -> bool:
    """Give the record writer behind ``writer`` (a ``SummaryWriter``) :func:`crc32c`.

    Returns whether it has it: ``False`` when TensorBoard's writer is not built as this
    module knows it (it is then left as it is). Called again, it does nothing more; a
    writer reopened with a new record writer gets it again.
    """
    try:
        record_writer = writer._get_file_writer().event_writer._async_writer._writer
        from tensorboard.summary.writer.record_writer import RecordWriter
    except (AttributeError, ImportError):
        return False
    if not isinstance(record_writer, RecordWriter) or not hasattr(record_writer, "_writer"):
        return False
    if "write" not in vars(record_writer):
        record_writer.write = types.MethodType(_write_record, record_writer)
    return True
