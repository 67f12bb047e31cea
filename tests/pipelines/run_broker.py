"""`python -m tests.pipelines.run_broker broker ...`: `dray broker` with the compacted-data reader wired in, for
as long as Broker.start() does not wire it itself (then this changes nothing)."""

from __future__ import annotations

import sys

from dray_broker.fetch.compacted import CompactedReader
from dray_broker.server.broker import Broker

_start = Broker.start


async def _start_with_compacted_reader(self) -> None:
    await _start(self)
    if self.reader.load_compacted is None:
        self.reader.load_compacted = CompactedReader(self.objects).load


Broker.start = _start_with_compacted_reader

if __name__ == "__main__":
    from dray_broker.cli import main

    sys.exit(main())
