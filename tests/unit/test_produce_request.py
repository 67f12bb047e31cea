"""The hand-written Produce v0-v2 request decoder (kio has no schema for them) against a real client library's
encoder: kafka-python's legacy protocol classes. Broken frames raise MalformedRequestError and nothing else."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.protocol.old import produce as old_produce

from dray_broker.produce.legacy_request import decode_legacy_produce_request
from dray_broker.protocol.codec import MalformedRequestError

partition = st.tuples(st.integers(0, 2**31 - 1), st.binary(max_size=300))
topic = st.tuples(st.text(min_size=1, max_size=30), st.lists(partition, max_size=4))
request = st.tuples(st.sampled_from([-1, 0, 1, 7]), st.integers(0, 2**31 - 1), st.lists(topic, max_size=3),
                    st.text(max_size=20))


def _frame(version: int, acks, timeout, topics, client_id) -> bytes:
    cls = getattr(old_produce, f"ProduceRequest_v{version}")
    req = cls(acks=acks, timeout_ms=timeout, topic_data=[(name, list(parts)) for name, parts in topics])
    req.with_header(correlation_id=42, client_id=client_id)
    return req.encode(header=True)


@pytest.mark.parametrize("version", range(0, 3))
@settings(max_examples=80, deadline=None)
@given(r=request)
def test_matches_kafka_python(version, r):
    acks, timeout, topics, client_id = r
    req = decode_legacy_produce_request(_frame(version, *r))
    assert (req.api_key, req.version, req.correlation_id, req.client_id) == (0, version, 42, client_id)
    body = req.body
    assert (body.transactional_id, body.acks, body.timeout_ms) == (None, acks, timeout)
    assert [(t.name, [(p.index, bytes(p.records)) for p in t.partition_data]) for t in body.topic_data] == topics


def test_every_truncation_is_malformed():
    frame = _frame(2, -1, 1000, [("orders", [(0, b"x" * 20), (1, b"y")])], "c")
    decode_legacy_produce_request(frame)
    for end in range(len(frame)):
        with pytest.raises(MalformedRequestError):
            decode_legacy_produce_request(frame[:end])


def test_an_impossible_count_is_refused_before_looping():
    frame = _frame(1, -1, 1000, [], "c")
    broken = frame[:-4] + struct.pack(">i", 2**31 - 1)  # the topic count
    with pytest.raises(MalformedRequestError, match="more than the frame holds"):
        decode_legacy_produce_request(broken)


def test_null_records_are_kept_as_none():
    frame = _frame(0, 1, 1000, [("t", [(3, b"")])], "c")
    null = frame[:-4] + struct.pack(">i", -1)  # the records length of the one partition
    assert decode_legacy_produce_request(null).body.topic_data[0].partition_data[0].records is None
