package dray;

import java.io.BufferedOutputStream;
import java.io.BufferedReader;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Collection;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;

import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRebalanceListener;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.WakeupException;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

/**
 * The Java Kafka client as a command line tool for Dray's tests. Output: one JSON object per line on stdout.
 *
 * <pre>
 * produce --bootstrap B --topic T [--count N] [--print-acks false] [--props k=v,...]
 *     Without --count, reads records from stdin, one per line, tab separated:
 *     partition|-  timestamp|-  key-base64|-  value-base64|-  headers (name-base64:value-base64|-, comma separated)
 *     ("-" is null: the partitioner picks / the producer stamps / a null key or value). With --count N it sends
 *     key-i/value-i. Prints {"index","partition","offset","timestamp"} per acked record (or {"index","error"}),
 *     then {"event":"done","sent","acked","errors","ms"}. Exit 1 if any record failed.
 *
 * consume --bootstrap B --topic T[,T2...] [--group G] [--group-protocol classic|consumer]
 *         [--assign all|P,P...] [--count N] [--timeout-ms X] [--until-eof] [--commit true|false] [--props k=v,...]
 *     --assign: assign() the partitions (all, or these numbers of each topic), no group needed, nothing committed.
 *     Otherwise subscribe() with --group; rebalances print {"event":"assigned"|"revoked"|"lost","partitions":[..],
 *     "assignment":[..]}. Records print as {"topic","partition","offset","timestamp","timestampType","key","value",
 *     "headers":[[name, value]...],"leaderEpoch"} (key, value and header values base64, or null). With a group,
 *     offsets are committed after each poll that returned records (--commit false: never). Stops after N records,
 *     after X ms (default 30000; 0 = none), or with --until-eof when stdin closes; then closes the consumer (leaves
 *     the group) and prints {"event":"done","records","timedOut","ms"}. Exit 2 if it timed out before N records.
 * </pre>
 * delete-records --bootstrap B --topic T --offsets P:O,P:O... [--props k=v,...]
 *     Admin.deleteRecords: records of partition P before offset O (-1: the high watermark) are deleted. Prints
 *     {"partition","lowWatermark"} or {"partition","error"} per partition. Exit 1 if any failed.
 * warmup
 *     Loads the classes of both commands without a broker (a training run for a class data sharing archive).
 *
 * Any failure prints {"event":"error","error":..} and exits 1 (stack trace on stderr). Client logs: WARN, stderr.
 */
public final class ClientTool {

    /** stdout as UTF-8 whatever the locale; emit() flushes each line. */
    static final PrintStream OUT =
        new PrintStream(new BufferedOutputStream(new FileOutputStream(FileDescriptor.out), 1 << 16), false,
            StandardCharsets.UTF_8);

    public static void main(String[] argv) {
        // Before any Kafka class logs: keep test output readable (override with -D on the java command line).
        if (System.getProperty("org.slf4j.simpleLogger.defaultLogLevel") == null) {
            System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
        }
        int rc;
        try {
            if (argv.length == 0) {
                throw new IllegalArgumentException("usage: ClientTool produce|consume --bootstrap B --topic T ...");
            }
            Map<String, String> args = parseArgs(argv);
            switch (argv[0]) {
                case "produce": rc = produce(args); break;
                case "consume": rc = consume(args); break;
                case "delete-records": rc = deleteRecords(args); break;
                case "warmup": rc = warmup(); break;
                default: throw new IllegalArgumentException("unknown subcommand " + argv[0]);
            }
        } catch (Exception e) {
            e.printStackTrace();
            emit("{\"event\":\"error\",\"error\":" + str(e.toString()) + "}");
            rc = 1;
        }
        OUT.flush();
        System.exit(rc);
    }

    // ------------------------------------------------------------------------------------------------ delete-records

    static int deleteRecords(Map<String, String> args) throws Exception {
        Properties props = new Properties();
        props.put("bootstrap.servers", required(args, "bootstrap"));
        props.put("request.timeout.ms", "15000");
        props.put("default.api.timeout.ms", "30000");
        props.putAll(extraProps(args));
        String topic = required(args, "topic");
        Map<org.apache.kafka.common.TopicPartition, org.apache.kafka.clients.admin.RecordsToDelete> wanted =
            new HashMap<>();
        for (String item : required(args, "offsets").split(",")) {
            String[] po = item.split(":");
            long offset = Long.parseLong(po[1]);
            wanted.put(new TopicPartition(topic, Integer.parseInt(po[0])),
                org.apache.kafka.clients.admin.RecordsToDelete.beforeOffset(offset));
        }
        int rc = 0;
        try (org.apache.kafka.clients.admin.Admin admin = org.apache.kafka.clients.admin.Admin.create(props)) {
            var result = admin.deleteRecords(wanted).lowWatermarks();
            for (var e : result.entrySet()) {
                try {
                    long low = e.getValue().get().lowWatermark();
                    emit("{\"partition\":" + e.getKey().partition() + ",\"lowWatermark\":" + low + "}");
                } catch (java.util.concurrent.ExecutionException error) {
                    rc = 1;
                    emit("{\"partition\":" + e.getKey().partition() + ",\"error\":"
                        + str(error.getCause().getClass().getSimpleName()) + "}");
                }
            }
        }
        return rc;
    }

    // ------------------------------------------------------------------------------------------------ produce

    static int produce(Map<String, String> args) throws Exception {
        Properties props = producerProps(args);
        String topic = required(args, "topic");
        long count = Long.parseLong(args.getOrDefault("count", "-1"));
        boolean printAcks = !"false".equals(args.get("print-acks"));
        BufferedReader stdin = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        AtomicLong acked = new AtomicLong();
        AtomicLong failed = new AtomicLong();
        long started = System.nanoTime();
        long sent = 0;
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(props)) {
            while (true) {
                ProducerRecord<byte[], byte[]> record;
                if (count >= 0) {
                    if (sent >= count) break;
                    record = new ProducerRecord<>(topic, utf8("key-" + sent), utf8("value-" + sent));
                } else {
                    String line = stdin.readLine();
                    if (line == null) break;
                    if (line.isEmpty()) continue;
                    record = parseRecord(topic, line);
                }
                long index = sent++;
                producer.send(record, (md, error) -> {
                    if (error != null) {
                        failed.incrementAndGet();
                        emit("{\"index\":" + index + ",\"error\":" + str(error.toString()) + "}");
                    } else {
                        acked.incrementAndGet();
                        if (printAcks) {
                            emit("{\"index\":" + index + ",\"partition\":" + md.partition() + ",\"offset\":"
                                + md.offset() + ",\"timestamp\":" + md.timestamp() + "}");
                        }
                    }
                });
            }
            producer.flush();
        }
        emit("{\"event\":\"done\",\"sent\":" + sent + ",\"acked\":" + acked.get() + ",\"errors\":" + failed.get()
            + ",\"ms\":" + (System.nanoTime() - started) / 1_000_000 + "}");
        return failed.get() == 0 ? 0 : 1;
    }

    /** partition, timestamp, key, value, headers: see the class comment. */
    static ProducerRecord<byte[], byte[]> parseRecord(String topic, String line) {
        String[] f = line.split("\t", -1);
        if (f.length != 5) throw new IllegalArgumentException("want 5 tab-separated fields: " + line);
        RecordHeaders headers = new RecordHeaders();
        if (!f[4].isEmpty()) {
            for (String h : f[4].split(",")) {
                int colon = h.indexOf(':');
                headers.add(new String(b64(h.substring(0, colon)), StandardCharsets.UTF_8),
                    b64(h.substring(colon + 1)));
            }
        }
        Integer partition = f[0].equals("-") ? null : Integer.valueOf(f[0]);
        Long timestamp = f[1].equals("-") ? null : Long.valueOf(f[1]);
        return new ProducerRecord<>(topic, partition, timestamp, b64(f[2]), b64(f[3]), headers);
    }

    // ------------------------------------------------------------------------------------------------ consume

    static int consume(Map<String, String> args) throws Exception {
        Properties props = consumerProps(args);
        String group = args.get("group");
        List<String> topics = List.of(required(args, "topic").split(","));
        long count = Long.parseLong(args.getOrDefault("count", "-1"));
        long timeoutMs = Long.parseLong(args.getOrDefault("timeout-ms", "30000"));
        String assign = args.get("assign");
        boolean commit = group != null && assign == null && !"false".equals(args.get("commit"));
        AtomicBoolean stop = new AtomicBoolean();
        long started = System.nanoTime();
        long deadline = timeoutMs > 0 ? started + timeoutMs * 1_000_000 : Long.MAX_VALUE;
        long seen = 0;
        boolean timedOut = false;
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(props)) {
            if (assign != null) {
                List<TopicPartition> tps = new ArrayList<>();
                for (String t : topics) {
                    if (assign.equals("all")) {
                        for (PartitionInfo p : consumer.partitionsFor(t)) tps.add(new TopicPartition(t, p.partition()));
                    } else {
                        for (String p : assign.split(",")) tps.add(new TopicPartition(t, Integer.parseInt(p)));
                    }
                }
                consumer.assign(tps);
                emit("{\"event\":\"assigned\",\"partitions\":" + partitions(tps) + ",\"assignment\":"
                    + partitions(consumer.assignment()) + "}");
            } else {
                if (group == null) throw new IllegalArgumentException("consume needs --group or --assign");
                consumer.subscribe(topics, new ConsumerRebalanceListener() {
                    public void onPartitionsRevoked(Collection<TopicPartition> revoked) {
                        if (commit && !revoked.isEmpty()) consumer.commitSync();
                        event("revoked", revoked);
                    }

                    public void onPartitionsAssigned(Collection<TopicPartition> assigned) {
                        event("assigned", assigned);
                    }

                    public void onPartitionsLost(Collection<TopicPartition> lost) {
                        event("lost", lost);
                    }

                    private void event(String name, Collection<TopicPartition> tps) {
                        emit("{\"event\":\"" + name + "\",\"partitions\":" + partitions(tps) + ",\"assignment\":"
                            + partitions(consumer.assignment()) + "}");
                    }
                });
            }
            if (args.containsKey("until-eof")) {
                Thread eof = new Thread(() -> {
                    try {
                        while (System.in.read() >= 0) { /* wait for EOF */ }
                    } catch (Exception ignored) {
                        // closed: same as EOF
                    }
                    stop.set(true);
                    consumer.wakeup();
                }, "stdin-eof");
                eof.setDaemon(true);
                eof.start();
            }
            try {
                while (!stop.get() && (count < 0 || seen < count)) {
                    long left = (deadline - System.nanoTime()) / 1_000_000;
                    if (left <= 0) {
                        timedOut = true;
                        break;
                    }
                    ConsumerRecords<byte[], byte[]> records = consumer.poll(Duration.ofMillis(Math.min(left, 200)));
                    for (ConsumerRecord<byte[], byte[]> r : records) {
                        emit(recordJson(r));
                        seen++;
                    }
                    if (commit && !records.isEmpty()) consumer.commitSync();
                }
            } catch (WakeupException e) {
                // stdin closed
            }
        }
        emit("{\"event\":\"done\",\"records\":" + seen + ",\"timedOut\":" + timedOut + ",\"ms\":"
            + (System.nanoTime() - started) / 1_000_000 + "}");
        return timedOut && count >= 0 ? 2 : 0;
    }

    static String recordJson(ConsumerRecord<byte[], byte[]> r) {
        StringBuilder h = new StringBuilder("[");
        for (Header header : r.headers()) {
            if (h.length() > 1) h.append(',');
            h.append('[').append(str(header.key())).append(',').append(b64(header.value())).append(']');
        }
        h.append(']');
        return "{\"topic\":" + str(r.topic()) + ",\"partition\":" + r.partition() + ",\"offset\":" + r.offset()
            + ",\"timestamp\":" + r.timestamp() + ",\"timestampType\":" + str(r.timestampType().toString())
            + ",\"key\":" + b64(r.key()) + ",\"value\":" + b64(r.value()) + ",\"headers\":" + h
            + ",\"leaderEpoch\":" + r.leaderEpoch().map(String::valueOf).orElse("null") + "}";
    }

    static String partitions(Collection<TopicPartition> tps) {
        StringBuilder b = new StringBuilder("[");
        for (TopicPartition tp : tps) {
            if (b.length() > 1) b.append(',');
            b.append("{\"topic\":").append(str(tp.topic())).append(",\"partition\":").append(tp.partition())
                .append('}');
        }
        return b.append(']').toString();
    }

    // ------------------------------------------------------------------------------------------------ warmup

    static int warmup() throws Exception {
        Map<String, String> args = Map.of("bootstrap", "127.0.0.1:9", "props", "max.block.ms=1");
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(producerProps(args))) {
            producer.send(parseRecord("warmup", "0\t1\t-\tAA==\tYQ==:-"), (md, e) -> { }).get();
        } catch (Exception expected) {
            // no broker: metadata times out
        }
        try (KafkaConsumer<byte[], byte[]> consumer =
                 new KafkaConsumer<>(consumerProps(Map.of("bootstrap", "127.0.0.1:9")))) {
            consumer.assign(List.of(new TopicPartition("warmup", 0)));
            for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(50))) {
                recordJson(r);
            }
            partitions(consumer.assignment());
        }
        recordJson(new ConsumerRecord<>("warmup", 0, 0L, new byte[1], new byte[1]));
        org.apache.kafka.common.protocol.Errors.forCode((short) 0);  // the error enum loads every exception class
        emit("{\"event\":\"done\"}");
        return 0;
    }

    // ------------------------------------------------------------------------------------------------ helpers

    /** --name value pairs after the subcommand; a flag without a value is "true". */
    static Map<String, String> parseArgs(String[] argv) {
        Map<String, String> out = new HashMap<>();
        for (int i = 1; i < argv.length; i++) {
            if (!argv[i].startsWith("--")) throw new IllegalArgumentException("unexpected argument " + argv[i]);
            String name = argv[i].substring(2);
            if (i + 1 < argv.length && !argv[i + 1].startsWith("--")) {
                out.put(name, argv[++i]);
            } else {
                out.put(name, "true");
            }
        }
        return out;
    }

    /** The client's own defaults (idempotent, acks=all), byte[] keys and values, then --props. */
    static Properties producerProps(Map<String, String> args) {
        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, required(args, "bootstrap"));
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        p.putAll(extraProps(args));
        return p;
    }

    /** From the earliest offset, no auto commit, --group and --group-protocol (default classic), then --props. */
    static Properties consumerProps(Map<String, String> args) {
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, required(args, "bootstrap"));
        p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        p.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        if (args.containsKey("group")) {
            p.put(ConsumerConfig.GROUP_ID_CONFIG, args.get("group"));
            p.put(ConsumerConfig.GROUP_PROTOCOL_CONFIG, args.getOrDefault("group-protocol", "classic"));
        }
        p.putAll(extraProps(args));
        return p;
    }

    /** --props k=v,k=v: applied last, over this tool's defaults. */
    static Properties extraProps(Map<String, String> args) {
        Properties p = new Properties();
        String spec = args.get("props");
        if (spec != null && !spec.isEmpty()) {
            for (String kv : spec.split(",")) {
                int eq = kv.indexOf('=');
                if (eq <= 0) throw new IllegalArgumentException("--props wants k=v,...: " + kv);
                p.put(kv.substring(0, eq).trim(), kv.substring(eq + 1).trim());
            }
        }
        return p;
    }

    static String required(Map<String, String> args, String name) {
        String v = args.get(name);
        if (v == null) throw new IllegalArgumentException("--" + name + " is required");
        return v;
    }

    static synchronized void emit(String jsonLine) {
        OUT.println(jsonLine);
        OUT.flush();
    }

    static byte[] utf8(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    static byte[] b64(String s) {
        return s.equals("-") ? null : Base64.getDecoder().decode(s);
    }

    static String b64(byte[] b) {
        return b == null ? "null" : "\"" + Base64.getEncoder().encodeToString(b) + "\"";
    }

    /** A JSON string literal. */
    static String str(String s) {
        if (s == null) return "null";
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"': b.append("\\\""); break;
                case '\\': b.append("\\\\"); break;
                case '\n': b.append("\\n"); break;
                case '\r': b.append("\\r"); break;
                case '\t': b.append("\\t"); break;
                default:
                    if (c < 0x20) b.append(String.format("\\u%04x", (int) c));
                    else b.append(c);
            }
        }
        return b.append('"').toString();
    }
}
