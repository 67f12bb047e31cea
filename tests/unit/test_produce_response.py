"""The hand-written Produce response encoder against kio's, byte for byte, for every supported version."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.protocol.old import produce as old_produce
from kio.schema.errors import ErrorCode

from dray_broker.produce.response import encode_produce_response
from dray_broker.protocol.codec import encode_response, make, response_module

ERRORS = [ErrorCode.none, ErrorCode.kafka_storage_error, ErrorCode.unknown_topic_or_partition,
          ErrorCode.out_of_order_sequence_number]

partition = st.tuples(st.integers(0, 2**31 - 1), st.sampled_from(ERRORS), st.integers(-1, 2**63 - 1),
                      st.one_of(st.none(), st.text(max_size=40)))
topic = st.tuples(st.text(min_size=1, max_size=30), st.uuids(), st.lists(partition, max_size=4))


def _kio(version: int, topics) -> bytes:
    M = response_module(0, version)
    body = make(M.ProduceResponse, throttle_time=0, responses=tuple(
        make(M.TopicProduceResponse, name=name, topic_id=topic_id, partition_responses=tuple(
            make(M.PartitionProduceResponse, index=i, error_code=e, base_offset=o, log_append_time=None,
                 log_start_offset=-1, record_errors=(), error_message=m)
            for i, e, o, m in parts))
        for name, topic_id, parts in topics))
    return b"".join(encode_response(0, version, 42, body))


@pytest.mark.parametrize("version", range(3, 14))
@settings(max_examples=60, deadline=None)
@given(topics=st.lists(topic, max_size=3))
def test_matches_kio(version, topics):
    mine = b"".join(encode_response(0, version, 42, encode_produce_response(version, topics)))
    assert mine == _kio(version, topics)


def test_typical_response():
    topics = [("orders", uuid.uuid4(), [(3, ErrorCode.none, 12345, None)])]
    for version in range(3, 14):
        assert b"".join(encode_response(0, version, 42, encode_produce_response(version, topics))) \
            == _kio(version, topics)


@pytest.mark.parametrize("version", range(0, 3))
@settings(max_examples=60, deadline=None)
@given(topics=st.lists(topic, max_size=3))
def test_legacy_versions_decode_with_kafka_python(version, topics):
    """kio has no v0-v2 schema; kafka-python's legacy protocol classes read what an old client reads."""
    frame = b"".join(encode_response(0, version, 42, encode_produce_response(version, topics)))
    cls = getattr(old_produce, f"ProduceResponse_v{version}")
    decoded = cls.decode(frame[4:], header=True)
    assert decoded.header.correlation_id == 42
    got = [(name, [tuple(p)[:3] for p in parts]) for name, parts in decoded.responses]
    assert got == [(name, [(i, e, o) for i, e, o, _ in parts]) for name, _, parts in topics]
    if version >= 1:
        assert decoded.throttle_time_ms == 0
    assert decoded.encode(header=True) == frame[4:]  # every byte accounted for, log_append_time (v2) included
