"""records/keys.py: the first record without a key, in plain and compressed batches, past multi-byte varints."""

from __future__ import annotations

import pytest

from dray_broker.records.encode import encode_batch
from dray_broker.records.keys import keyless_record


def _batch(keys, codec=None, value=b"v", ts_step=0, base_offset=0):
    records = [(i, i * ts_step, k, value, [("h", b"x")] if i % 3 == 0 else []) for i, k in enumerate(keys)]
    return encode_batch(records, base_offset=base_offset, base_timestamp=0, max_timestamp=len(keys) * ts_step,
                        compression=codec)


@pytest.mark.parametrize("codec", [None, 1, 2, 3, 4])
def test_finds_the_first_keyless_record(codec):
    keys = [b"k%d" % i for i in range(300)]
    assert keyless_record(_batch(keys, codec, value=b"x" * 200, ts_step=1000), 1 << 24) is None
    keys[170] = keys[250] = None  # offset delta 170 is a two-byte varint
    assert keyless_record(_batch(keys, codec, value=b"x" * 200, ts_step=1000), 1 << 24) == 170


def test_across_batches_and_with_empty_keys():
    first = _batch([b"a", b"", b"c"])  # an empty key is a key (length 0), not a null one
    second = _batch([b"d", None], base_offset=3)
    assert keyless_record(first, 1 << 20) is None
    assert keyless_record(first + second, 1 << 20) == 1
