"""The record-level decoder against batches made by a real client library (kafka-python), every codec, plus
hand-made snappy batches in both framings (raw block as librdkafka writes, xerial as the Java client writes)."""

from __future__ import annotations

import struct

import cramjam
import pytest
from crc32c import crc32c

from dray_broker.records import decode as rd
from dray_broker.records.batch import CRC_START, HEADER_SIZE, LOG_OVERHEAD, read_header
from tests.batches import CODEC_IDS, make_batch, read_batch

CODECS = list(CODEC_IDS)


def _records(n: int, size: int = 20) -> list[tuple[bytes | None, bytes | None]]:
    out = []
    for i in range(n):
        key = None if i % 3 == 0 else b"k%d" % i
        value = None if i % 7 == 6 else (b"v%d-" % i) * (size // 4 + 1)
        out.append((key, value))
    return out


def _rebuild(batch: bytes, codec: int, records_section: bytes) -> bytes:
    """The same batch header with another codec and records section; length and CRC recomputed."""
    head = bytearray(batch[:HEADER_SIZE])
    attributes = struct.unpack_from(">h", head, 21)[0]
    struct.pack_into(">h", head, 21, (attributes & ~0x07) | codec)
    struct.pack_into(">i", head, 8, HEADER_SIZE - LOG_OVERHEAD + len(records_section))
    data = head + records_section
    struct.pack_into(">I", data, 17, crc32c(bytes(data[CRC_START:])))
    return bytes(data)


def _xerial(raw: bytes, block: int) -> bytes:
    out = [rd.XERIAL_MAGIC, struct.pack(">ii", 1, 1)]
    for i in range(0, len(raw), block):
        chunk = bytes(cramjam.snappy.compress_raw(raw[i : i + block]))
        out.append(struct.pack(">i", len(chunk)) + chunk)
    return b"".join(out)


@pytest.mark.parametrize("codec", CODECS)
def test_decode_client_batches_every_codec(codec):
    records = _records(50)
    data = make_batch(records, codec=codec, timestamp=1_700_000_000_000)
    assert read_header(data).compression == CODEC_IDS[codec]
    batch = rd.decode_batch(data, verify_crc=True)
    assert batch.compression == CODEC_IDS[codec]
    assert len(batch.records) == 50
    assert [(r.offset, r.key, r.value) for r in batch.records] == read_batch(data)
    for i, r in enumerate(batch.records):
        assert r.timestamp == 1_700_000_000_000 + i
        assert (r.key, r.value) == records[i]
        assert r.headers == (("h", b"%d" % i),)
    assert batch.max_timestamp == 1_700_000_000_049
    assert batch.next_offset == 50
    assert not batch.is_control and not batch.is_transactional


@pytest.mark.parametrize("codec", CODECS)
def test_large_batches_every_codec(codec):
    # Large enough for several xerial snappy blocks (kafka-python uses 32 KiB blocks) and lz4/zstd frame blocks.
    records = _records(300, size=1000)
    data = make_batch(records, codec=codec)
    batch = rd.decode_batch(data, verify_crc=True)
    assert [(r.key, r.value) for r in batch.records] == records


def test_kafka_python_snappy_is_xerial_framed():
    data = make_batch(_records(5), codec="snappy")
    assert data[HEADER_SIZE:].startswith(rd.XERIAL_MAGIC)


def test_raw_snappy_block_like_librdkafka():
    plain = make_batch(_records(40), codec="none")
    section = bytes(cramjam.snappy.compress_raw(plain[HEADER_SIZE:]))
    data = _rebuild(plain, rd.SNAPPY, section)
    assert not data[HEADER_SIZE:].startswith(rd.XERIAL_MAGIC)
    assert read_batch(data) == read_batch(plain)  # the client library reads it too
    batch = rd.decode_batch(data, verify_crc=True)
    assert [(r.offset, r.key, r.value, r.headers) for r in batch.records] == \
        [(r.offset, r.key, r.value, r.headers) for r in rd.decode_batch(plain).records]


@pytest.mark.parametrize("block", [16, 1000, 1 << 20])
def test_hand_made_xerial_snappy(block):
    plain = make_batch(_records(40, size=100), codec="none")
    data = _rebuild(plain, rd.SNAPPY, _xerial(plain[HEADER_SIZE:], block))
    batch = rd.decode_batch(data, verify_crc=True)
    assert [(r.offset, r.key, r.value) for r in batch.records] == read_batch(plain)


def test_lz4_independent_blocks_and_zstd_from_cramjam():
    plain = make_batch(_records(100, size=300), codec="none")
    section = plain[HEADER_SIZE:]
    lz4 = cramjam.lz4.Compressor(block_linked=False)
    lz4.compress(section)
    lz4_data = _rebuild(plain, rd.LZ4, bytes(lz4.finish()))
    zstd_data = _rebuild(plain, rd.ZSTD, bytes(cramjam.zstd.compress(section)))
    gzip_data = _rebuild(plain, rd.GZIP, bytes(cramjam.gzip.compress(section)))
    expected = read_batch(plain)
    for data in (lz4_data, zstd_data, gzip_data):
        assert [(r.offset, r.key, r.value) for r in rd.decode_batch(data, verify_crc=True).records] == expected


def test_many_batches_with_patched_and_overridden_offsets():
    a = make_batch(_records(3), codec="gzip")
    b = make_batch(_records(4), codec="zstd", timestamp=1_800_000_000_000)
    data = bytearray(a + b)
    # As the fetch path does: patch baseOffset in place (outside the CRC).
    struct.pack_into(">q", data, 0, 100)
    struct.pack_into(">q", data, len(a), 103)
    batches = rd.decode_batches(bytes(data), verify_crc=True)
    assert [r.offset for bt in batches for r in bt.records] == list(range(100, 107))
    # An unpatched WAL chunk: the caller supplies the first offset.
    overridden = rd.decode_batches(a + b, base_offset=500)
    assert [r.offset for r in rd.iter_records(a + b, base_offset=500)] == list(range(500, 507))
    assert overridden[1].base_offset == 503
    assert [r.timestamp for r in overridden[1].records] == [1_800_000_000_000 + i for i in range(4)]
    cols = rd.columns(batches)
    assert cols["offset"] == list(range(100, 107))
    assert cols["headers"][0] == [("h", b"0")]
    assert len(cols["value"]) == 7 and cols["attributes"][3] == 4


def test_log_append_time_uses_the_batch_max_timestamp():
    plain = bytearray(make_batch(_records(3), codec="none"))
    attributes = struct.unpack_from(">h", plain, 21)[0]
    struct.pack_into(">h", plain, 21, attributes | 0x08)
    struct.pack_into(">q", plain, 35, 1_234)  # maxTimestamp
    struct.pack_into(">I", plain, 17, crc32c(bytes(plain[CRC_START:])))
    batch = rd.decode_batch(bytes(plain), verify_crc=True)
    assert batch.log_append_time
    assert [r.timestamp for r in batch.records] == [1_234] * 3


def test_partial_trailing_batch():
    a = make_batch(_records(3))
    b = make_batch(_records(3))
    data = a + b[:30]
    with pytest.raises(rd.RecordDecodeError):
        rd.decode_batches(data)
    assert len(rd.decode_batches(data, allow_partial=True)) == 1


def test_corrupt_input_raises_decode_errors():
    plain = make_batch(_records(10), codec="none")
    with pytest.raises(rd.RecordDecodeError, match="CRC"):
        bad = bytearray(plain)
        bad[-1] ^= 0xFF
        rd.decode_batch(bytes(bad), verify_crc=True)
    # Truncated records section with a consistent header (CRC not checked): a clean error, not IndexError.
    truncated = _rebuild(plain, 0, plain[HEADER_SIZE:-5])
    with pytest.raises(rd.RecordDecodeError):
        rd.decode_batch(truncated)
    for codec in (rd.GZIP, rd.SNAPPY, rd.LZ4, rd.ZSTD):
        with pytest.raises(rd.RecordDecodeError, match="decompress"):
            rd.decode_batch(_rebuild(plain, codec, b"\x01\x02garbage-bytes"))
    with pytest.raises(rd.RecordDecodeError, match="xerial"):
        rd.decode_batch(_rebuild(plain, rd.SNAPPY, rd.XERIAL_MAGIC + b"\0\0\0\1\0\0\0\1\0\0\1\0abc"))
    with pytest.raises(rd.RecordDecodeError, match="magic"):
        old = bytearray(plain)
        old[16] = 1
        rd.decode_batch(bytes(old))
    with pytest.raises(rd.RecordDecodeError, match="codec"):
        rd.decode_batch(_rebuild(plain, 6, plain[HEADER_SIZE:]))


def test_varint_edges():
    def zz(n: int) -> bytes:
        u = (n << 1) ^ (n >> 63)
        out = bytearray()
        while True:
            if u < 0x80:
                out.append(u)
                return bytes(out)
            out.append((u & 0x7F) | 0x80)
            u >>= 7

    for n in (0, -1, 1, 63, -64, 64, 300, -300, 2**31 - 1, -(2**31), 2**62, -(2**63), 2**63 - 1):
        assert rd.read_varint(zz(n), 0) == (n, len(zz(n)))
    with pytest.raises(rd.RecordDecodeError):
        rd.read_varint(b"\xff" * 11, 0)
