"""Compaction refuses, defensively, a batch that inflates beyond its topic's max.message.bytes (the produce path
refuses such batches; this one is written below it, straight through the WAL writer): the partition's run fails
with a message naming the partition and the batch's offsets, without the compactor's memory following the bomb,
and the other partitions compact."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from dray_broker.records.encode import encode_batch
from tests.pipelines.conftest import lake_settings
from tests.pipelines.helpers import append_batches, log_state, write_log

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
# `dray compact`, reporting its peak resident memory on stderr (VmHWM: getrusage's ru_maxrss would carry this
# process's own peak over to the child).
_MEASURED = ("import re, sys\nfrom dray_broker.cli import main\nrc = main(sys.argv[1:])\n"
             "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)\n"
             "print('MAXRSS', int(hwm) * 1024, file=sys.stderr)\nsys.exit(rc)")


def _compact(data_dir: Path) -> tuple[subprocess.CompletedProcess, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DRAY_", "DAGSTER_HOME"))}
    done = subprocess.run([sys.executable, "-c", _MEASURED, "compact", "--all", "--data-dir", str(data_dir),
                           "--grace-ms", "0"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=clean)
    peak = int(done.stderr.rsplit("MAXRSS ", 1)[1].split()[0])
    return done, peak


def test_compaction_refuses_a_bomb_and_compacts_the_other_partitions(tmp_path):
    data = tmp_path / "data"
    settings = lake_settings(data)
    asyncio.run(write_log(settings, "bomb.events", 2, batches=3, records_per_batch=10))  # [0, 30) in each
    # 512 records of 1 MiB of zeros, gzip: about 0.5 MiB that inflate to 512 MiB (max.message.bytes: 1 MiB).
    bomb = encode_batch([(i, 0, b"k", bytes(MiB), ()) for i in range(512)], base_offset=0,
                        base_timestamp=1_700_000_000_000, max_timestamp=1_700_000_000_000, compression=1)
    assert len(bomb) < MiB
    assert asyncio.run(append_batches(settings, "bomb.events", 0, [bomb])) == 30
    del bomb

    done, peak = _compact(data)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "bomb.events-0: batch at offsets [30, 542)" in done.stderr, done.stderr
    assert "max.message.bytes" in done.stderr, done.stderr
    assert peak < 400 * MiB, f"dray compact peaked at {peak / MiB:.0f} MiB"  # the bomb alone would take 512 MiB
    state = asyncio.run(log_state(settings, "bomb.events", 0))
    assert (state.watermark, state.log_end) == (0, 542)
    state = asyncio.run(log_state(settings, "bomb.events", 1))
    assert state.watermark == state.log_end == 30
