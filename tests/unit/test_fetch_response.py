"""The hand-written Fetch response encoder against kio's, byte for byte, for every supported version (4-18)."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kio.schema.errors import ErrorCode

from dray_broker.fetch.response import encode_fetch_response
from dray_broker.protocol.codec import encode_response, make, response_module

ERRORS = [ErrorCode.none, ErrorCode.offset_out_of_range, ErrorCode.unknown_topic_or_partition,
          ErrorCode.unknown_topic_id, ErrorCode.not_leader_or_follower]

# Records as the reader returns them: views of larger buffers, one per index entry the fetch spans.
records = st.lists(st.binary(min_size=1, max_size=300), max_size=4).map(
    lambda parts: [memoryview(b"xx" + p + b"yy")[2:-2] for p in parts])
partition = st.tuples(st.integers(0, 2**31 - 1), st.sampled_from(ERRORS), st.integers(-1, 2**63 - 1),
                      st.integers(-1, 2**63 - 1), records).map(
    lambda p: p if p[1] == ErrorCode.none else (*p[:4], []))  # a partition with an error has no records
topic = st.tuples(st.text(min_size=1, max_size=30), st.uuids(), st.lists(partition, max_size=4))


def _kio(version: int, topics) -> bytes:
    M = response_module(1, version)
    body = make(M.FetchResponse, throttle_time=0, error_code=ErrorCode.none, session_id=0, node_endpoints=(),
                responses=tuple(
                    make(M.FetchableTopicResponse, topic=name, topic_id=topic_id, partitions=tuple(
                        make(M.PartitionData, partition_index=i, error_code=e, high_watermark=hw,
                             last_stable_offset=hw, log_start_offset=lso,
                             aborted_transactions=None if e else (), preferred_read_replica=-1,
                             records=b"".join(recs))
                        for i, e, hw, lso, recs in parts))
                    for name, topic_id, parts in topics))
    return b"".join(encode_response(1, version, 42, body))


def _mine(version: int, topics) -> bytes:
    return b"".join(encode_response(1, version, 42, encode_fetch_response(version, topics)))


@pytest.mark.parametrize("version", range(4, 19))
@settings(max_examples=60, deadline=None)
@given(topics=st.lists(topic, max_size=3))
def test_matches_kio(version, topics):
    assert _mine(version, topics) == _kio(version, topics)


@pytest.mark.parametrize("version", range(4, 19))
def test_typical_responses(version):
    data = bytearray(b"\x00" * 70 + b"batch" * 20)
    view = memoryview(data)
    topics = [
        ("orders", uuid.uuid4(), [(0, ErrorCode.none, 120, 0, [view[:70], view[70:]]),  # spans two entries
                                  (1, ErrorCode.none, 0, 0, []),  # nothing new
                                  (7, ErrorCode.offset_out_of_range, 50, 10, [])]),
        ("gone", uuid.uuid4(), [(0, ErrorCode.unknown_topic_or_partition, -1, -1, [])]),
    ]
    assert _mine(version, topics) == _kio(version, topics)
    assert _mine(version, []) == _kio(version, [])


def test_records_are_passed_through_not_copied():
    data = bytearray(b"b" * 1000)
    pieces = [memoryview(data)[:400], memoryview(data)[400:]]
    frame = encode_response(1, 16, 7, encode_fetch_response(16, [(None, uuid.uuid4(), [(0, 0, 9, 0, pieces)])]))
    assert any(chunk is pieces[0] for chunk in frame) and any(chunk is pieces[1] for chunk in frame)
    assert int.from_bytes(frame[0], "big") == sum(map(len, frame[1:]))
