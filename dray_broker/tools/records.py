"""`dray produce` (lines from stdin) and `dray consume` (records to stdout), kcat style."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import stat
import sys
import time
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, Producer, TopicPartition

from dray_broker.tools.client import (
    EXIT_USAGE,
    ToolError,
    admin_client,
    client_config,
    command,
    connection_flags,
    kafka_error,
    key_value,
    parse_timestamp,
    require_topic,
    topic_metadata,
)
from dray_broker.tools.output import Progress, note, plural, print_json, text_or_base64

OFFSET_TAIL_BASE = -2000  # librdkafka's RD_KAFKA_OFFSET_TAIL(n) = -2000 - n: n records before the end
DEFAULT_FORMAT = "%s\\n"


def register(sub) -> None:
    add_produce(sub)
    add_consume(sub)


def _add_topic(p) -> None:
    p.add_argument("topic", nargs="?")
    p.add_argument("--topic", "-t", dest="topic_option", metavar="TOPIC", help="the topic (kcat's -t)")


def _the_topic(args) -> str:
    if (args.topic is None) == (args.topic_option is None):
        raise ToolError("give the topic once: as an argument or with -t TOPIC", EXIT_USAGE)
    return args.topic or args.topic_option


def add_produce(sub) -> None:
    """`produce` in these subcommands (`dray produce`, and rpk's spelling `dray topic produce`)."""
    p = sub.add_parser("produce", parents=[connection_flags()], help="produce lines of stdin as records",
                       description="Produce each line of stdin as one record (acks=all, idempotent). Prints a "
                                   "summary, or with --json one line per record with its partition and offset.")
    _add_topic(p)
    p.add_argument("--key-separator", "-K", metavar="SEP",
                   help="split each line at the first SEP into key and value (a line without SEP has no key)")
    p.add_argument("--header", "-H", action="append", default=[], metavar="KEY=VALUE",
                   help="a header on every record (repeatable; duplicates are kept in order)")
    p.add_argument("--partition", "-p", type=int, default=None,
                   help="produce to this partition (default: by key hash, or sticky for records without key)")
    p.add_argument("--compression", choices=["none", "gzip", "snappy", "lz4", "zstd"], default="none")
    p.set_defaults(func=cmd_produce)


def add_consume(sub) -> None:
    """`consume` in these subcommands (`dray consume`, and rpk's spelling `dray topic consume`)."""
    p = sub.add_parser("consume", parents=[connection_flags()], help="consume records to stdout",
                       description="Print records, one per line: the value by default, or as --format says. "
                                   "Without --group, partitions are assigned directly and nothing is committed.")
    _add_topic(p)
    p.add_argument("--group", "-G", metavar="GROUP", help="consume as a member of GROUP (commits offsets)")
    p.add_argument("--partition", "-p", type=int, action="append", default=None,
                   help="only this partition (repeatable; not with --group)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--offset", "-o", type=parse_start, metavar="OFFSET",
                       help="where to start in every partition (kcat's -o): beginning (or start, earliest), end "
                            "(or latest), stored (the group's committed offsets), N (offset N), -N (N records "
                            "before the end), s@TIME (the first record at or after TIME: ms since the epoch or "
                            "ISO 8601). Default: end, or with --group stored. With --group: stored, beginning and "
                            "end (where the group has no committed offset) and s@TIME")
    start.add_argument("--from-beginning", action="store_true", help="the same as -o beginning")
    start.add_argument("--from-timestamp", metavar="TIME", help="the same as -o s@TIME")
    p.add_argument("--count", "-c", type=int, metavar="N", help="stop after N records")
    p.add_argument("--exit-at-end", "-e", action="store_true",
                   help="stop at the end of every partition (the log end offset as reached)")
    p.add_argument("--format", "-f", metavar="FMT",
                   help="kcat-style: %%t topic, %%p partition, %%o offset, %%k key, %%s value, %%K key size, "
                        "%%S value size, %%h headers (k=v,...), %%T timestamp (ms), \\n \\t \\\\; a newline is "
                        "added if FMT has none")
    p.set_defaults(func=cmd_consume)


# --- produce ----------------------------------------------------------------------------------------------------


def _stdin_size() -> int | None:
    try:
        st = os.fstat(sys.stdin.fileno())
    except (OSError, ValueError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


class _Deliveries:
    """Delivery reports: per-partition counts and offset ranges, failures, and (--json) one line per record
    printed in input order."""

    def __init__(self, *, json_lines: bool):
        self.json_lines = json_lines
        self.failures: list[str] = []
        self.partitions: dict[int, list[int]] = {}  # partition -> [count, lowest offset, highest offset]
        self._pending: dict[int, dict] = {}
        self._next = 0

    def on_delivery(self, err, msg) -> None:
        if err is not None:
            self.failures.append(err.str())
            return
        offset = msg.offset()
        stats = self.partitions.get(msg.partition())
        if stats is None:
            self.partitions[msg.partition()] = [1, offset, offset]
        else:
            stats[0] += 1
            if offset < stats[1]:
                stats[1] = offset
            if offset > stats[2]:
                stats[2] = offset

    def for_line(self, line_no: int, key: bytes | None):
        def on_delivery(err, msg):
            self.on_delivery(err, msg)
            if err is not None:
                doc = {"line": line_no + 1, "error": err.str()}
            else:
                doc = {"line": line_no + 1, "topic": msg.topic(), "partition": msg.partition(),
                       "offset": msg.offset(), "timestamp": msg.timestamp()[1]}
                if key is not None:
                    text_or_base64(key, "key", doc)
            self._pending[line_no] = doc
            while self._next in self._pending:
                print_json(self._pending.pop(self._next), lines=True)
                self._next += 1
        return on_delivery


def _topic_to_produce_to(admin, args):
    """The topic's metadata. A topic that does not exist is asked for as producers ask (Metadata with
    allow_auto_topic_creation): a broker with auto.create.topics.enable creates it, as it does for kcat or any
    producer, and the user is told; otherwise the error says how to create it."""
    known = topic_metadata(admin, args).get(args.topic)
    if known is not None and known.error is None:
        return known
    try:
        found = admin.list_topics(topic=args.topic, timeout=args.timeout).topics.get(args.topic)
    except KafkaException as e:
        raise kafka_error(e, f"cannot look up topic {args.topic!r}") from None
    if found is None or (found.error is not None and found.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
        raise ToolError(f"topic {args.topic!r} does not exist and the broker does not create topics on first use "
                        f"(auto.create.topics.enable=false): create it with: dray topics create {args.topic}")
    if found.error is not None:
        raise ToolError(f"topic {args.topic!r}: {found.error.str()}")
    note(f"topic {args.topic!r} did not exist: the broker created it with {plural(len(found.partitions), 'partition')} "
         "(it creates topics on first use; `dray topics create` chooses partitions and configs)")
    return found


@command
def cmd_produce(args) -> int:
    args.topic = _the_topic(args)
    headers = [(k, v.encode()) for k, v in (key_value(h, "--header KEY=VALUE") for h in args.header)]
    separator = args.key_separator.encode() if args.key_separator is not None else None
    if separator == b"":
        raise ToolError("--key-separator must not be empty", EXIT_USAGE)
    admin = admin_client(args)
    topic = _topic_to_produce_to(admin, args)
    if args.partition is not None and args.partition not in topic.partitions:
        raise ToolError(f"topic {args.topic!r} has {plural(len(topic.partitions), 'partition')}: there is no "
                        f"partition {args.partition}")

    producer = Producer(client_config(args, **{
        "acks": "all", "enable.idempotence": True, "linger.ms": 5, "compression.type": args.compression,
        "message.timeout.ms": int(max(30.0, args.timeout) * 1000),
    }))
    deliveries = _Deliveries(json_lines=args.json)
    size = _stdin_size()
    started = time.monotonic()
    count = 0
    read = 0
    extra = {"partition": args.partition} if args.partition is not None else {}
    with Progress(f"producing to {args.topic}", total=size, unit="bytes" if size else "records") as bar:
        for line in sys.stdin.buffer:
            read += len(line)
            if line.endswith(b"\n"):
                line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
            key, value = None, line
            if separator is not None:
                k, sep, v = line.partition(separator)
                if sep:
                    key, value = k, v
            callback = deliveries.for_line(count, key) if args.json else deliveries.on_delivery
            while True:
                try:
                    producer.produce(args.topic, value=value, key=key, headers=headers or None,
                                     on_delivery=callback, **extra)
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    producer.poll(0.05)
                except KafkaException as e:
                    raise kafka_error(e, f"cannot produce to {args.topic!r}") from None
            count += 1
            if count % 256 == 0:
                producer.poll(0)
                bar.advance(read if size else 256)
                read = 0
        remaining = producer.flush(max(30.0, args.timeout))
        bar.advance(read if size else count % 256)
    if remaining:
        raise ToolError(f"{remaining} of {count} records were not acknowledged in time (is the broker up?)")
    elapsed = time.monotonic() - started
    if deliveries.failures:
        for problem in deliveries.failures[:5]:
            note(f"dray: {problem}")
        raise ToolError(f"{len(deliveries.failures)} of {plural(count, 'record')} failed")
    if not args.json:
        ranges = ", ".join(f"partition {p}: " + (f"{n} at offsets {first}..{last}" if n > 1 else f"1 at offset {first}")
                           for p, (n, first, last) in sorted(deliveries.partitions.items()))
        print(f"produced {plural(count, 'record')} to {args.topic} in {elapsed:.2f} s"
              + (f" ({ranges})" if ranges else ""))
    return 0


# --- consume ----------------------------------------------------------------------------------------------------

_FORMAT_TOKEN = re.compile(r"%[tpokKsSTh%]|\\[ntr\\]|%.?|[^%\\]+|\\.?")


def compile_format(fmt: str):
    """A kcat-style --format as a function of a message to bytes."""
    tokens = _FORMAT_TOKEN.findall(fmt)
    escapes = {"\\n": b"\n", "\\t": b"\t", "\\r": b"\r", "\\\\": b"\\"}
    for t in tokens:
        if t.startswith("%") and t not in ("%t", "%p", "%o", "%k", "%K", "%s", "%S", "%T", "%h", "%%"):
            raise ToolError(f"--format: unknown field {t!r} (use %t %p %o %k %K %s %S %h %T)", EXIT_USAGE)
    if not any(t == "\\n" for t in tokens):
        tokens.append("\\n")

    def headers(msg) -> bytes:
        return b",".join(k.encode() + b"=" + (v if v is not None else b"") for k, v in (msg.headers() or []))

    fields = {
        "%t": lambda m: m.topic().encode(),
        "%p": lambda m: str(m.partition()).encode(),
        "%o": lambda m: str(m.offset()).encode(),
        "%k": lambda m: m.key() or b"",
        "%K": lambda m: str(len(m.key()) if m.key() is not None else -1).encode(),
        "%s": lambda m: m.value() or b"",
        "%S": lambda m: str(len(m.value()) if m.value() is not None else -1).encode(),
        "%T": lambda m: str(m.timestamp()[1]).encode(),
        "%h": headers,
        "%%": lambda m: b"%",
    }
    parts = [fields[t] if t in fields else (lambda m, b=escapes.get(t, t.encode()): b) for t in tokens]
    return lambda m: b"".join(part(m) for part in parts)


def _as_json(msg) -> dict:
    doc = {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(),
           "timestamp": msg.timestamp()[1]}
    text_or_base64(msg.key(), "key", doc)
    text_or_base64(msg.value(), "value", doc)
    hdrs = []
    for k, v in msg.headers() or []:
        h = {"key": k}
        text_or_base64(v, "value", h)
        hdrs.append(h)
    doc["headers"] = hdrs
    return doc


def _json_line(msg) -> bytes:
    return json.dumps(_as_json(msg), ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


_FATAL_CONSUME_ERRORS = {KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC,
                         KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED}


@dataclass(frozen=True)
class Start:
    """Where `dray consume` starts in each partition: kind is beginning, end, stored, offset (value N), tail (value:
    N records before the end) or timestamp (value: ms since the epoch)."""

    kind: str
    value: int = 0


_START_WORDS = {"beginning": "beginning", "start": "beginning", "earliest": "beginning",
                "end": "end", "latest": "end", "stored": "stored"}


def parse_start(text: str) -> Start:
    """kcat's -o: beginning | end | stored | N | -N | s@TIME (and rpk's start, Kafka's earliest/latest)."""
    word = text.strip().lower()
    if word in _START_WORDS:
        return Start(_START_WORDS[word])
    if word.startswith("s@"):
        try:
            return Start("timestamp", parse_timestamp(text.strip()[2:]))
        except ToolError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    try:
        n = int(word)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: use beginning, end, stored, an offset N, -N (N records before the end) or s@TIME") from None
    return Start("offset", n) if n >= 0 else Start("tail", -n)


def _start(args) -> Start | None:
    if args.from_beginning:
        return Start("beginning")
    if args.from_timestamp is not None:
        return Start("timestamp", parse_timestamp(args.from_timestamp))
    return args.offset


def _start_offsets(consumer: Consumer, args, partitions: list[int], start: Start | None) -> list[TopicPartition]:
    kind = start.kind if start is not None else "end"
    if kind == "timestamp":
        try:
            found = consumer.offsets_for_times([TopicPartition(args.topic, p, start.value) for p in partitions],
                                               timeout=args.timeout)
        except KafkaException as e:
            raise kafka_error(e, "cannot look up offsets by timestamp") from None
        # No record at or after the time: start at the end (as Kafka's reset to a timestamp does).
        return [TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_END) for tp in found]
    offset = {"beginning": OFFSET_BEGINNING, "end": OFFSET_END, "offset": start.value if start else 0,
              "tail": OFFSET_TAIL_BASE - (start.value if start else 0)}[kind]
    return [TopicPartition(args.topic, p, offset) for p in partitions]


@command
def cmd_consume(args) -> int:
    args.topic = _the_topic(args)
    if args.group and args.partition is not None:
        raise ToolError("--partition cannot be used with --group (the group assigns partitions)", EXIT_USAGE)
    start = _start(args)
    if args.group and start is not None and start.kind in ("offset", "tail"):
        raise ToolError("with --group, -o takes stored, beginning, end or s@TIME: to move the group's offsets use "
                        "`dray groups reset-offsets`, or consume without --group", EXIT_USAGE)
    if not args.group and start is not None and start.kind == "stored":
        raise ToolError("-o stored starts at a group's committed offsets: give the group with --group", EXIT_USAGE)
    if args.count is not None and args.count < 0:
        raise ToolError("--count must not be negative", EXIT_USAGE)
    if args.format and args.json:
        raise ToolError("choose --format or --json", EXIT_USAGE)
    render = _json_line if args.json else compile_format(args.format or DEFAULT_FORMAT)

    admin = admin_client(args)
    topic = require_topic(admin, args, args.topic)
    partitions = sorted(topic.partitions)
    if args.partition is not None:
        missing = [p for p in args.partition if p not in topic.partitions]
        if missing:
            raise ToolError(f"topic {args.topic!r} has {plural(len(partitions), 'partition')}: there is no partition "
                            f"{', '.join(map(str, missing))}")
        partitions = sorted(set(args.partition))

    conf = client_config(args, **{
        "group.id": args.group or "dray-cli-unused",  # librdkafka wants one; without --group nothing uses it
        "enable.auto.commit": bool(args.group),
        "enable.auto.offset.store": True,
        "auto.offset.reset": "earliest" if start is not None and start.kind == "beginning" else "latest",
        "enable.partition.eof": True,
    })
    consumer = Consumer(conf)
    assigned: set[tuple[str, int]] = set()
    at_end: set[tuple[str, int]] = set()

    if args.group:
        def on_assign(c, tps):
            assigned.update((tp.topic, tp.partition) for tp in tps)
            if start is not None and start.kind == "timestamp":
                tps = _start_offsets(c, args, [tp.partition for tp in tps], start)
            c.assign(tps)

        def on_revoke(c, tps):
            for tp in tps:
                assigned.discard((tp.topic, tp.partition))
                at_end.discard((tp.topic, tp.partition))

        consumer.subscribe([args.topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_revoke)
    else:
        tps = _start_offsets(consumer, args, partitions, start)
        assigned.update((tp.topic, tp.partition) for tp in tps)
        consumer.assign(tps)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # as Ctrl-C: leave the group cleanly, commit what was printed
    out = sys.stdout.buffer
    count = 0
    interrupted = False
    try:
        with Progress(f"consuming {args.topic}", total=args.count, unit="records") as bar:
            while args.count is None or count < args.count:
                if args.exit_at_end and assigned and at_end >= assigned:
                    break
                # Never take more than --count still allows: what is returned is stored for the commit.
                wanted = 500 if args.count is None else min(500, args.count - count)
                batch = consumer.consume(wanted, 0.2)
                printed = 0
                for msg in batch:
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            at_end.add((msg.topic(), msg.partition()))
                            continue
                        if err.fatal() or err.code() in _FATAL_CONSUME_ERRORS:
                            raise kafka_error(KafkaException(err), f"cannot consume {args.topic!r}")
                        continue  # transient (the client retries): keep going
                    if at_end:
                        at_end.discard((msg.topic(), msg.partition()))
                    out.write(render(msg))
                    printed += 1
                if printed:
                    count += printed
                    bar.advance(printed)
                    if args.count is None or len(batch) < wanted:
                        out.flush()  # records trickle in: show them as they come
    except KeyboardInterrupt:
        interrupted = True
    finally:
        try:
            out.flush()
        finally:
            consumer.close()  # with --group: commits what was printed, and leaves the group
    if interrupted and sys.stderr.isatty():
        note(f"consumed {plural(count, 'record')}")
    return 0
