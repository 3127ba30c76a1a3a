"""The vectorized CRC-32C that TensorBoard's record writer gets: the standard's values, the
same bytes on disk as TensorBoard's own writer, and files its reader accepts."""

from __future__ import annotations

import glob
import io
import os

import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.summary.writer.record_writer import RecordWriter

from lit_explain.logging import checksums
from lit_explain.logging.checksums import crc32c, masked_crc32c, use_fast_checksums


def bitwise_crc32c(data: bytes) -> int:
    """CRC-32C bit by bit from its definition (reflected polynomial 0x82F63B78)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_crc32c_has_the_standards_check_value_and_agrees_bit_by_bit():
    assert crc32c(b"123456789") == 0xE3069283  # the check value of CRC-32C (RFC 3720)
    assert crc32c(b"") == 0
    rng = np.random.default_rng(0)
    lengths = [1, 15, 16, 17, checksums.SMALL - 1, checksums.SMALL, checksums.SMALL + 1,
               4096, 4097, 20011]
    for n in lengths:
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert crc32c(data) == bitwise_crc32c(data), n
    zeros = bytes(5000)  # leading zero bytes count (the register starts at 0xFFFFFFFF)
    assert crc32c(zeros) == bitwise_crc32c(zeros) != crc32c(bytes(4999))


def test_masked_checksum_is_tfrecords_rotation_plus_constant():
    x = crc32c(b"abc" * 1000)
    assert masked_crc32c(b"abc" * 1000) == ((((x >> 15) | (x << 17)) & 0xFFFFFFFF)
                                             + 0xA282EAD8) & 0xFFFFFFFF


def test_records_are_byte_for_byte_what_tensorboards_writer_writes():
    rng = np.random.default_rng(1)
    records = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in (0, 7, 3000, 40000)]
    theirs, ours = io.BytesIO(), io.BytesIO()
    plain, fast = RecordWriter(theirs), RecordWriter(ours)
    fast.write = checksums._write_record.__get__(fast)
    for data in records:
        plain.write(data)
        fast.write(data)
    assert ours.getvalue() == theirs.getvalue()


def test_a_loggers_writer_gets_them_and_its_file_reads_back(tmp_path):
    from lit_explain.logging import log_images, log_scalars

    logger = TensorBoardLogger(str(tmp_path), name="tb")
    other = TensorBoardLogger(str(tmp_path), name="other")
    image = np.random.default_rng(2).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    log_images([logger], "explain/all", [image], 3)  # a record far above SMALL bytes
    log_scalars([logger], {"explain/time_s": 0.5}, 3)
    writer = logger.experiment._get_file_writer().event_writer._async_writer._writer
    assert "write" in vars(writer)  # this writer has them, once
    assert use_fast_checksums(logger.experiment)
    other.log_metrics({"a": 1.0}, step=0)  # a writer the callback never used: untouched
    assert "write" not in vars(other.experiment._get_file_writer().event_writer._async_writer
                               ._writer)
    logger.finalize("success")
    (event_file,) = glob.glob(os.path.join(logger.log_dir, "events.out.tfevents.*"))
    # TensorBoard's loader checks both checksums of every record and raises on a mismatch
    events = list(event_file_loader.RawEventFileLoader(event_file).Load())
    assert len(events) >= 3  # file version, the picture, the scalars
    summaries = [v.tag for e in event_file_loader.EventFileLoader(event_file).Load()
                 if e.HasField("summary") for v in e.summary.value]
    assert summaries == ["explain/all", "explain/time_s"]
    # the reader does check: one flipped bit in the last record's checksum loses that record
    damaged = bytearray(open(event_file, "rb").read())
    damaged[-1] ^= 1
    copy = tmp_path / "damaged.tfevents"
    copy.write_bytes(bytes(damaged))
    assert len(list(event_file_loader.RawEventFileLoader(str(copy)).Load())) == len(events) - 1


def test_a_writer_built_otherwise_is_left_alone():
    class Elsewhere:
        def _get_file_writer(self):
            return object()

    assert use_fast_checksums(Elsewhere()) is False
