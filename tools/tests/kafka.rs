//! Kafka clients against real `raftline server` processes: kcat (librdkafka) lists, produces
//! and consumes unchanged, the native client and Kafka clients read each other's records, and
//! the protocol's edge cases answered over raw Kafka bytes (requests encoded with the
//! kafka-protocol crate).

mod cluster_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use cluster_support::{Cluster, CLUSTER, DEADLINE};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, FetchRequest, FetchResponse,
    InitProducerIdRequest, InitProducerIdResponse, ListOffsetsRequest, ListOffsetsResponse,
    MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse, ProducerId, RequestHeader,
    ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use raftline_log::{kafka, Record};
use raftline_netio::client::{Client, ClientConfig};
use raftline_netio::client_proto::StartFrom;
use raftline_netio::cluster_id::ClusterId;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn kafka_addr(cluster: &Cluster, id: u64) -> SocketAddr {
    cluster.node(id).kafka.expect("a Kafka cluster")
}

/// Runs kcat with `args`, feeding it `input`; asserts it succeeds and returns its stdout.
fn kcat(args: &[&str], input: &str) -> String {
    let mut child = Command::new("kcat")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat is installed (apt-get install kcat)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "kcat {args:?} failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn client_config(cluster: &Cluster) -> ClientConfig {
    let bootstrap = cluster.nodes.iter().map(|n| n.client.to_string()).collect();
    ClientConfig::new(bootstrap, ClusterId::from_name(CLUSTER))
}

/// The records from offset 0 until `count` were read, through the native client.
fn native_records(cluster: &Cluster, count: usize) -> Vec<(u64, Record)> {
    let client = Client::connect(client_config(cluster)).unwrap();
    let mut sub = client.subscribe(StartFrom::Offset(0)).unwrap();
    let deadline = Instant::now() + DEADLINE;
    let mut out = Vec::new();
    while out.len() < count {
        assert!(Instant::now() < deadline, "only {} records read", out.len());
        if let Some(r) = sub.next_record(Some(Duration::from_millis(200))).unwrap() {
            out.push((r.offset, r.record));
        }
    }
    out
}

#[test]
fn kcat_lists_the_topic_produces_with_acks_all_and_consumes_every_record_once_in_order() {
    let cluster = Cluster::start_kafka(3, "auto", &[]);
    let leader = cluster.wait_leader();
    let broker = kafka_addr(&cluster, 1).to_string();
    let metadata = kcat(&["-b", &broker, "-L"], "");
    assert!(metadata.contains(" 3 brokers:"), "{metadata}");
    assert!(
        metadata.contains(&format!("topic \"{CLUSTER}\" with 1 partitions")),
        "{metadata}"
    );
    assert!(
        metadata.contains(&format!("partition 0, leader {leader},")),
        "{metadata}"
    );

    let before = now_ms();
    let input: String = (0..50).map(|i| format!("key-{i}:value-{i}\n")).collect();
    kcat(
        &[
            "-b",
            &broker,
            "-t",
            CLUSTER,
            "-P",
            "-K:",
            "-H",
            "source=kcat",
            "-H",
            "source=twice",
            "-X",
            "acks=all",
            "-X",
            "enable.idempotence=true",
        ],
        &input,
    );
    let after = now_ms();
    let consumed = kcat(
        &[
            "-b",
            &broker,
            "-t",
            CLUSTER,
            "-p",
            "0",
            "-C",
            "-o",
            "beginning",
            "-e",
            "-f",
            "%o|%k|%s|%h|%T\n",
        ],
        "",
    );
    let lines: Vec<&str> = consumed.lines().collect();
    assert_eq!(lines.len(), 50, "{consumed}");
    for (i, line) in lines.iter().enumerate() {
        let fields: Vec<&str> = line.split('|').collect();
        assert_eq!(
            &fields[..4],
            &[
                i.to_string().as_str(),
                &format!("key-{i}"),
                &format!("value-{i}"),
                "source=kcat,source=twice"
            ],
            "record {i}: {line}"
        );
        let ts: u64 = fields[4].parse().unwrap();
        assert!(
            (before..=after).contains(&ts),
            "timestamp {ts} of record {i}"
        );
    }
    // The native client reads the same records from the Kafka batches.
    let native = native_records(&cluster, 50);
    for (i, (offset, record)) in native.iter().enumerate() {
        assert_eq!(*offset, i as u64);
        assert_eq!(record.key.as_deref(), Some(format!("key-{i}").as_bytes()));
        assert_eq!(record.value, format!("value-{i}").as_bytes());
        assert_eq!(
            record.headers,
            vec![
                ("source".to_string(), b"kcat".to_vec()),
                ("source".to_string(), b"twice".to_vec())
            ]
        );
        assert!((before..=after).contains(&record.timestamp_ms));
    }
}

#[test]
fn native_records_are_read_by_kcat_and_compressed_kcat_records_by_raftline_tail() {
    let cluster = Cluster::start_kafka(3, "auto", &[]);
    cluster.wait_leader();
    let mut client = Client::connect(client_config(&cluster)).unwrap();
    let native: Vec<Record> = (0..5)
        .map(|i| Record {
            key: Some(format!("n{i}").into_bytes()),
            value: format!("native-{i}").into_bytes(),
            timestamp_ms: 1_700_000_000_000 + i,
            headers: vec![("h".into(), b"x".to_vec())],
        })
        .collect();
    client.append(&native).unwrap();
    let broker = kafka_addr(&cluster, 2).to_string();
    for codec in ["lz4", "zstd"] {
        let input: String = (0..3).map(|i| format!("{codec}-{i}\n")).collect();
        kcat(
            &[
                "-b", &broker, "-t", CLUSTER, "-P", "-z", codec, "-X", "acks=all",
            ],
            &input,
        );
    }
    let consumed = kcat(
        &[
            "-b",
            &broker,
            "-t",
            CLUSTER,
            "-C",
            "-o",
            "beginning",
            "-e",
            "-f",
            "%o|%k|%s|%h|%T\n",
        ],
        "",
    );
    let expected: Vec<String> = (0..5)
        .map(|i| format!("{i}|n{i}|native-{i}|h=x|{}", 1_700_000_000_000u64 + i))
        .collect();
    let lines: Vec<&str> = consumed.lines().collect();
    assert_eq!(lines.len(), 11, "{consumed}");
    assert_eq!(&lines[..5], &expected[..]);
    let bootstrap = cluster
        .nodes
        .iter()
        .map(|n| n.client.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let tail = Command::new(env!("CARGO_BIN_EXE_raftline"))
        .args(["tail", "--bootstrap", &bootstrap, "--cluster-id", CLUSTER])
        .args(["--from", "5", "--max", "6"])
        .output()
        .unwrap();
    assert!(tail.status.success(), "{tail:?}");
    let tail = String::from_utf8_lossy(&tail.stdout);
    let expected = "5\tlz4-0\n6\tlz4-1\n7\tlz4-2\n8\tzstd-0\n9\tzstd-1\n10\tzstd-2\n";
    assert_eq!(tail, expected);
}

/// A blocking Kafka connection speaking raw requests.
struct KafkaConn {
    stream: TcpStream,
    next_correlation: i32,
}

impl KafkaConn {
    fn connect(addr: SocketAddr) -> KafkaConn {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        KafkaConn {
            stream,
            next_correlation: 1,
        }
    }

    /// Sends a request at `version`; returns its correlation id.
    fn send<R: Encodable + HeaderVersion>(&mut self, key: ApiKey, version: i16, body: &R) -> i32 {
        let correlation_id = self.next_correlation;
        self.next_correlation += 1;
        let mut header = RequestHeader::default();
        header.request_api_key = key as i16;
        header.request_api_version = version;
        header.correlation_id = correlation_id;
        header.client_id = Some(StrBytes::from_static_str("raw-test"));
        let mut buf = BytesMut::new();
        header
            .encode(&mut buf, key.request_header_version(version))
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        let mut framed = (buf.len() as i32).to_be_bytes().to_vec();
        framed.extend_from_slice(&buf);
        self.stream.write_all(&framed).unwrap();
        correlation_id
    }

    /// The next response: its correlation id and body bytes (header at `header_version`).
    fn recv(&mut self, header_version: i16) -> (i32, Bytes) {
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).unwrap();
        let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
        self.stream.read_exact(&mut body).unwrap();
        let mut body = Bytes::from(body);
        let header = ResponseHeader::decode(&mut body, header_version).unwrap();
        (header.correlation_id, body)
    }

    fn call<Req: Encodable + HeaderVersion, Resp: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        body: &Req,
    ) -> Resp {
        let id = self.send(key, version, body);
        let (got, mut bytes) = self.recv(key.response_header_version(version));
        assert_eq!(got, id);
        Resp::decode(&mut bytes, version).unwrap()
    }

    /// Whether the node closed the connection within the deadline (end of stream or a reset;
    /// the read timing out means it is still open).
    fn closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        match self.stream.read(&mut buf) {
            Ok(n) => n == 0,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }
}

fn topic(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}

fn produce_request(acks: i16, records: Vec<u8>) -> ProduceRequest {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    let mut partition = PartitionProduceData::default();
    partition.index = 0;
    partition.records = Some(Bytes::from(records));
    let mut data = TopicProduceData::default();
    data.name = topic(CLUSTER);
    data.partition_data = vec![partition];
    let mut request = ProduceRequest::default();
    request.acks = acks;
    request.timeout_ms = 10_000;
    request.topic_data = vec![data];
    request
}

fn kafka_batch(values: &[&str]) -> Vec<u8> {
    let records: Vec<Record> = values
        .iter()
        .map(|v| Record {
            key: None,
            value: v.as_bytes().to_vec(),
            timestamp_ms: 1,
            headers: vec![],
        })
        .collect();
    let mut out = Vec::new();
    kafka::encode_records(&mut out, 0, 0, &records);
    out
}

/// Fixes batchLength and Kafka's CRC after an edit.
fn reseal(batch: &mut [u8]) {
    let len = (batch.len() - 12) as i32;
    batch[8..12].copy_from_slice(&len.to_be_bytes());
    let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, &batch[21..]) as u32;
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

fn produce_error(conn: &mut KafkaConn, records: Vec<u8>) -> (i16, i64) {
    let response: ProduceResponse = conn.call(ApiKey::Produce, 9, &produce_request(-1, records));
    let p = &response.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

fn fetch_request(offset: i64, max_wait_ms: i32) -> FetchRequest {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    let mut partition = FetchPartition::default();
    partition.partition = 0;
    partition.fetch_offset = offset;
    partition.partition_max_bytes = 1 << 20;
    partition.current_leader_epoch = -1;
    partition.log_start_offset = -1;
    let mut t = FetchTopic::default();
    t.topic = topic(CLUSTER);
    t.partitions = vec![partition];
    let mut request = FetchRequest::default();
    request.replica_id = kafka_protocol::messages::BrokerId(-1);
    request.max_wait_ms = max_wait_ms;
    request.min_bytes = 1;
    request.max_bytes = 1 << 20;
    request.session_epoch = -1;
    request.topics = vec![t];
    request
}

#[test]
fn protocol_edge_cases_get_kafkas_answers() {
    let cluster = Cluster::start_kafka(3, "auto", &[]);
    let leader = cluster.wait_leader();
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let mut conn = KafkaConn::connect(kafka_addr(&cluster, leader));
    use kafka_protocol::ResponseError as E;

    // An ApiVersions version newer than ours: the v0 answer with UNSUPPORTED_VERSION and the list.
    let id = conn.send(ApiKey::ApiVersions, 4, &ApiVersionsRequest::default());
    let (got, mut body) = conn.recv(0);
    assert_eq!(got, id);
    let versions = ApiVersionsResponse::decode(&mut body, 0).unwrap();
    assert_eq!(versions.error_code, E::UnsupportedVersion.code());
    let produce = versions
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::Produce as i16)
        .unwrap();
    assert_eq!((produce.min_version, produce.max_version), (3, 9));
    let v3: ApiVersionsResponse = conn.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    assert_eq!(v3.error_code, 0);

    // Metadata for an unknown topic.
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    let mut unknown = MetadataRequestTopic::default();
    unknown.name = Some(topic("no-such-topic"));
    let mut request = MetadataRequest::default();
    request.topics = Some(vec![unknown]);
    let metadata: MetadataResponse = conn.call(ApiKey::Metadata, 12, &request);
    assert_eq!(metadata.topics.len(), 1);
    assert_eq!(
        metadata.topics[0].error_code,
        E::UnknownTopicOrPartition.code()
    );
    assert_eq!(metadata.brokers.len(), 3);

    // A produce with acks=1 commits at offset 0.
    let (error, base) = produce_error(&mut conn, kafka_batch(&["a", "b"]));
    assert_eq!((error, base), (0, 0));

    // Refused batches: each with its code, none stored.
    let mut bad_crc = kafka_batch(&["c"]);
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 1;
    assert_eq!(
        produce_error(&mut conn, bad_crc).0,
        E::CorruptMessage.code()
    );
    for attr in [0x10i16, 0x20] {
        let mut b = kafka_batch(&["c"]);
        b[21..23].copy_from_slice(&attr.to_be_bytes());
        reseal(&mut b);
        assert_eq!(
            produce_error(&mut conn, b).0,
            E::InvalidRecord.code(),
            "attributes {attr:#x}"
        );
    }
    let mut gzip = kafka_batch(&["c"]);
    gzip[21..23].copy_from_slice(&1i16.to_be_bytes());
    reseal(&mut gzip);
    assert_eq!(
        produce_error(&mut conn, gzip).0,
        E::UnsupportedCompressionType.code()
    );
    let mut lying = kafka_batch(&["c", "d"]);
    lying[57..61].copy_from_slice(&3i32.to_be_bytes());
    lying[23..27].copy_from_slice(&2i32.to_be_bytes());
    reseal(&mut lying);
    assert_eq!(produce_error(&mut conn, lying).0, E::CorruptMessage.code());

    // acks=0 gets no response: the next request's answer is the next on the wire.
    let id = conn.send(ApiKey::Produce, 9, &produce_request(0, kafka_batch(&["e"])));
    let id2 = conn.send(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    let (got, _) = conn.recv(0);
    assert_eq!(got, id2, "request {id} (acks=0) was answered");

    // Pipelined requests are answered in order, the produce waiting for its commit first.
    let produce_id = conn.send(
        ApiKey::Produce,
        9,
        &produce_request(-1, kafka_batch(&["f"])),
    );
    let metadata_id = conn.send(ApiKey::Metadata, 12, &MetadataRequest::default());
    let (first, mut body) = conn.recv(ApiKey::Produce.response_header_version(9));
    assert_eq!(first, produce_id);
    let produced = ProduceResponse::decode(&mut body, 9).unwrap();
    assert_eq!(produced.responses[0].partition_responses[0].base_offset, 3);
    let (second, _) = conn.recv(ApiKey::Metadata.response_header_version(12));
    assert_eq!(second, metadata_id);

    // Fetch above the high watermark (past the log's end) and ListOffsets earliest/latest.
    let fetched: FetchResponse = conn.call(ApiKey::Fetch, 12, &fetch_request(100, 0));
    let p = &fetched.responses[0].partitions[0];
    assert_eq!(p.error_code, E::OffsetOutOfRange.code());
    assert_eq!(p.high_watermark, 4);
    let fetched: FetchResponse = conn.call(ApiKey::Fetch, 12, &fetch_request(1, 0));
    let p = &fetched.responses[0].partitions[0];
    assert_eq!(
        (p.error_code, p.log_start_offset, p.last_stable_offset),
        (0, 0, 4)
    );
    let mut values = Vec::new();
    let records = p.records.as_ref().unwrap();
    let mut rest = &records[..];
    while !rest.is_empty() {
        let len = i32::from_be_bytes(rest[8..12].try_into().unwrap()) as usize + 12;
        kafka::for_each_record(&rest[..len], |r| values.push(r.value.unwrap().to_vec())).unwrap();
        rest = &rest[len..];
    }
    assert_eq!(
        values,
        [&b"a"[..], b"b", b"e", b"f"],
        "whole batches from the one holding 1"
    );
    for (timestamp, expected) in [(-2i64, 0i64), (-1, 4)] {
        let (code, offset, _) = offset_for_time(&mut conn, timestamp);
        assert_eq!((code, offset), (0, expected), "timestamp {timestamp}");
    }

    // A long poll at the high watermark is answered when a record commits.
    let mut poller = KafkaConn::connect(kafka_addr(&cluster, leader));
    let poll_id = poller.send(ApiKey::Fetch, 12, &fetch_request(4, 20_000));
    let started = Instant::now();
    assert_eq!(produce_error(&mut conn, kafka_batch(&["g"])), (0, 4));
    let (got, mut body) = poller.recv(ApiKey::Fetch.response_header_version(12));
    assert_eq!(got, poll_id);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the poll waited it out"
    );
    let polled = FetchResponse::decode(&mut body, 12).unwrap();
    let p = &polled.responses[0].partitions[0];
    assert_eq!((p.error_code, p.high_watermark), (0, 5));
    assert!(!p.records.as_ref().unwrap().is_empty());

    // A follower refuses produces.
    let mut at_follower = KafkaConn::connect(kafka_addr(&cluster, follower));
    assert_eq!(
        produce_error(&mut at_follower, kafka_batch(&["h"])).0,
        E::NotLeaderOrFollower.code()
    );

    // Bad bytes close that connection only.
    let mut garbage = KafkaConn::connect(kafka_addr(&cluster, leader));
    garbage
        .stream
        .write_all(&[0, 0, 0, 6, 0x7f, 0x7f, 0, 0, 0, 0])
        .unwrap();
    assert!(garbage.closed(), "an unknown API key was taken");
    let v: ApiVersionsResponse = conn.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    assert_eq!(v.error_code, 0);
}

#[test]
fn fetch_below_the_log_start_is_out_of_range() {
    // Tiny snapshots and retention: the log start moves past offset 0 quickly.
    let cluster = Cluster::start_kafka(
        1,
        "auto",
        &["--snapshot-every-mib", "1", "--retain-mib", "0"],
    );
    let leader = cluster.wait_leader();
    let mut conn = KafkaConn::connect(kafka_addr(&cluster, leader));
    let value = "x".repeat(60_000);
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert_eq!(
            produce_error(&mut conn, kafka_batch(&[value.as_str(); 8])).0,
            0
        );
        let fetched: FetchResponse = conn.call(ApiKey::Fetch, 12, &fetch_request(0, 0));
        let p = &fetched.responses[0].partitions[0];
        if p.log_start_offset > 0 {
            assert_eq!(
                p.error_code,
                kafka_protocol::ResponseError::OffsetOutOfRange.code()
            );
            return;
        }
        assert!(Instant::now() < deadline, "the log start never moved");
    }
}

/// kafka-python and confluent-kafka (librdkafka): an idempotent producer with acks=all each,
/// then a consumer each with assign() at explicit offsets, reading all twenty records in order.
const PYTHON_CLIENTS: &str = r#"
import sys
from kafka import KafkaProducer, KafkaConsumer, TopicPartition as KTP
from confluent_kafka import Producer, Consumer, TopicPartition as CTP

bootstrap, topic = sys.argv[1], sys.argv[2]
p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
for i in range(10):
    p.send(topic, key=b"kp%d" % i, value=b"kafka-python-%d" % i, headers=[("h", b"kp")]).get(timeout=30)
p.close()
p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
failed = []
for i in range(10):
    p.produce(topic, key=b"ck%d" % i, value=b"confluent-%d" % i, headers=[("h", b"ck")],
              on_delivery=lambda err, msg: err and failed.append(err))
assert p.flush(30) == 0 and not failed, failed

c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
tp = KTP(topic, 0)
c.assign([tp])
c.seek(tp, 5)
got = []
while len(got) < 15:
    for records in c.poll(timeout_ms=1000).values():
        got += [(r.offset, r.key, r.value) for r in records]
c.close()
assert [o for o, _, _ in got] == list(range(5, 20)), got
assert got[0][2] == b"kafka-python-5" and got[14][2] == b"confluent-9", got

c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False})
c.assign([CTP(topic, 0, 0)])
seen = []
while len(seen) < 20:
    m = c.poll(1.0)
    if m is None:
        continue
    assert m.error() is None, m.error()
    seen.append((m.offset(), m.value(), m.headers()))
c.close()
assert [o for o, _, _ in seen] == list(range(20)), seen
assert seen[10] == (10, b"confluent-0", [("h", b"ck")]), seen[10]
print("ok", len(seen))
"#;

#[test]
fn kafka_python_and_confluent_kafka_produce_with_acks_all_and_consume_by_assignment() {
    let cluster = Cluster::start_kafka(3, "auto", &[]);
    cluster.wait_leader();
    let bootstrap = kafka_addr(&cluster, 3).to_string();
    let out = Command::new("python3")
        .args(["-c", PYTHON_CLIENTS, &bootstrap, CLUSTER])
        .output()
        .expect("python3 with kafka-python and confluent-kafka (pip install)");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok 20");
}

/// A Kafka batch of idempotent producer `producer_id` at `epoch` from sequence `base_sequence`.
fn idempotent_batch(producer_id: i64, epoch: i16, base_sequence: i32, values: &[&str]) -> Vec<u8> {
    let mut batch = kafka_batch(values);
    batch[43..51].copy_from_slice(&producer_id.to_be_bytes());
    batch[51..53].copy_from_slice(&epoch.to_be_bytes());
    batch[53..57].copy_from_slice(&base_sequence.to_be_bytes());
    reseal(&mut batch);
    batch
}

fn init_producer_id(
    conn: &mut KafkaConn,
    given: Option<(i64, i16)>,
    txn: Option<&str>,
) -> InitProducerIdResponse {
    let mut request = InitProducerIdRequest::default();
    request.transactional_id =
        txn.map(|t| kafka_protocol::messages::TransactionalId(StrBytes::from_string(t.into())));
    request.transaction_timeout_ms = 60_000;
    let (id, epoch) = given.unwrap_or((-1, -1));
    request.producer_id = ProducerId(id);
    request.producer_epoch = epoch;
    conn.call(ApiKey::InitProducerId, 4, &request)
}

#[test]
fn an_idempotent_resend_gets_the_original_offsets_and_gaps_and_stale_epochs_are_refused() {
    use kafka_protocol::ResponseError as E;
    let cluster = Cluster::start_kafka(3, "auto", &[]);
    let leader = cluster.wait_leader();
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let mut conn = KafkaConn::connect(kafka_addr(&cluster, leader));
    let v3: ApiVersionsResponse = conn.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    let init = v3
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::InitProducerId as i16)
        .expect("InitProducerId is announced");
    assert_eq!((init.min_version, init.max_version), (0, 4));

    // Any node hands out ids, every one new; a transactional id is refused.
    let mut at_follower = KafkaConn::connect(kafka_addr(&cluster, follower));
    let from_follower = init_producer_id(&mut at_follower, None, None);
    assert_eq!(from_follower.error_code, 0);
    let txn = init_producer_id(&mut conn, None, Some("my-transaction"));
    assert_eq!(txn.error_code, E::TransactionalIdAuthorizationFailed.code());
    let granted = init_producer_id(&mut conn, None, None);
    assert_eq!(granted.error_code, 0);
    assert_eq!(granted.producer_epoch, 0);
    let pid = granted.producer_id.0;
    assert!(pid > 0);
    let other = init_producer_id(&mut conn, None, None).producer_id.0;
    assert!(
        other != pid && from_follower.producer_id.0 != pid && other != from_follower.producer_id.0
    );

    // The first batch, then the same bytes again: one copy, the original offsets.
    let first = idempotent_batch(pid, 0, 0, &["a", "b"]);
    assert_eq!(produce_error(&mut conn, first.clone()), (0, 0));
    assert_eq!(
        produce_error(&mut conn, first),
        (0, 0),
        "a resend gets its offsets"
    );
    // A resend pipelined right behind its original (both in flight at once).
    let second = idempotent_batch(pid, 0, 2, &["c"]);
    let a = conn.send(ApiKey::Produce, 9, &produce_request(-1, second.clone()));
    let b = conn.send(ApiKey::Produce, 9, &produce_request(-1, second));
    for expected in [a, b] {
        let (id, mut body) = conn.recv(ApiKey::Produce.response_header_version(9));
        assert_eq!(id, expected);
        let r = ProduceResponse::decode(&mut body, 9).unwrap();
        let p = &r.responses[0].partition_responses[0];
        assert_eq!((p.error_code, p.base_offset), (0, 2), "request {id}");
    }
    // A gap, an unknown producer not starting at 0, a negative sequence: refused, not stored.
    let gap = idempotent_batch(pid, 0, 5, &["gap"]);
    assert_eq!(
        produce_error(&mut conn, gap).0,
        E::OutOfOrderSequenceNumber.code()
    );
    let unknown = idempotent_batch(pid + 1000, 0, 3, &["unknown"]);
    assert_eq!(
        produce_error(&mut conn, unknown).0,
        E::UnknownProducerId.code()
    );
    let negative = idempotent_batch(pid, 0, -1, &["negative"]);
    assert_eq!(
        produce_error(&mut conn, negative).0,
        E::InvalidRecord.code()
    );
    // A bumped epoch starts at 0 and fences the old one.
    let bumped = init_producer_id(&mut conn, Some((pid, 0)), None);
    assert_eq!(
        (
            bumped.error_code,
            bumped.producer_id.0,
            bumped.producer_epoch
        ),
        (0, pid, 1)
    );
    let new_epoch = idempotent_batch(pid, 1, 0, &["d"]);
    assert_eq!(produce_error(&mut conn, new_epoch), (0, 3));
    let stale = idempotent_batch(pid, 0, 3, &["stale"]);
    assert_eq!(
        produce_error(&mut conn, stale).0,
        E::InvalidProducerEpoch.code()
    );
    let fenced = init_producer_id(&mut conn, Some((pid, 0)), None);
    assert_eq!(fenced.error_code, E::InvalidProducerEpoch.code());
    // A plain (non-idempotent) batch is never judged.
    assert_eq!(produce_error(&mut conn, kafka_batch(&["plain"])), (0, 4));
    assert_eq!(produce_error(&mut conn, kafka_batch(&["plain"])), (0, 5));

    let values: Vec<Vec<u8>> = native_records(&cluster, 6)
        .into_iter()
        .map(|(_, r)| r.value)
        .collect();
    let expected: Vec<&[u8]> = vec![b"a", b"b", b"c", b"d", b"plain", b"plain"];
    assert_eq!(values, expected, "every batch once, none of the refused");
    let fetch: FetchResponse = conn.call(ApiKey::Fetch, 12, &fetch_request(0, 0));
    assert_eq!(fetch.responses[0].partitions[0].high_watermark, 6);
}

/// An idempotent confluent-kafka producer (acks=all): sends `count` records `kafka-<i>`, one
/// every millisecond, and prints one line per record: `<i> <offset>` once acknowledged, or
/// `<i> error <why>`.
const IDEMPOTENT_KAFKA_PRODUCER: &str = r#"
import sys, time
from confluent_kafka import Producer

bootstrap, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
              "linger.ms": 5, "message.timeout.ms": 45000, "retry.backoff.ms": 50})
results = {}
def done(err, msg, i):
    results[i] = ("error %s" % err) if err else str(msg.offset())
for i in range(count):
    p.produce(topic, value=b"kafka-%d" % i, on_delivery=lambda err, msg, i=i: done(err, msg, i))
    p.poll(0)
    time.sleep(0.001)
assert p.flush(60) == 0
for i in range(count):
    print(i, results.get(i, "error unanswered"))
"#;

/// Kill -9 of the leader while an idempotent Kafka producer (confluent-kafka) and an idempotent
/// native producer run: every acknowledged record is at its acknowledged offset, every record
/// is in the log exactly once (the resends the kill causes are recognised by the new leader),
/// and a consumer reading the log sees every offset once.
#[test]
fn killing_the_leader_under_idempotent_kafka_and_native_producers_stores_every_record_once() {
    use raftline_netio::client::{Producer, Subscription};
    use std::collections::BTreeMap;

    const RECORDS: u64 = 3000;
    let mut cluster = Cluster::start_kafka(3, "auto", &[]);
    let leader = cluster.wait_leader();
    let brokers: Vec<String> = (1..=3)
        .map(|id| kafka_addr(&cluster, id).to_string())
        .collect();
    let kafka = Command::new("python3")
        .args(["-c", IDEMPOTENT_KAFKA_PRODUCER, &brokers.join(","), CLUSTER])
        .arg(RECORDS.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with confluent-kafka (pip install)");
    let native_config = client_config(&cluster);
    assert!(
        native_config.idempotent,
        "the native client is idempotent by default"
    );
    let native = std::thread::spawn(move || {
        let mut producer = Producer::new(native_config);
        let mut acks = Vec::new();
        for seq in 0..RECORDS {
            let record = Record {
                key: None,
                value: format!("native-{seq}").into_bytes(),
                timestamp_ms: seq,
                headers: vec![],
            };
            assert_eq!(producer.send(record).unwrap(), seq);
            acks.extend(producer.take_acks());
            std::thread::sleep(Duration::from_millis(1));
        }
        producer.flush().unwrap();
        acks.extend(producer.take_acks());
        acks
    });
    // Kill the leader once both producers are well under way.
    let leader_addr = cluster.node(leader).client;
    let deadline = Instant::now() + DEADLINE;
    while cluster_support::status(leader_addr).is_ok_and(|s| s.log_end_offset < RECORDS / 2) {
        assert!(Instant::now() < deadline, "the producers never got going");
        std::thread::sleep(Duration::from_millis(2));
    }
    cluster.kill(leader);

    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    for ack in native.join().unwrap() {
        let offset = ack
            .result
            .expect("every native record acknowledged in the end");
        acked.insert(format!("native-{}", ack.seq), offset);
    }
    let out = kafka.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in stdout.lines() {
        let (i, result) = line.split_once(' ').unwrap();
        let offset = result
            .parse()
            .unwrap_or_else(|_| panic!("Kafka record {i} not acknowledged: {result}"));
        acked.insert(format!("kafka-{i}"), offset);
    }
    assert_eq!(acked.len() as u64, 2 * RECORDS, "an answer per record");
    let end = acked.values().max().unwrap() + 1;

    let survivors: Vec<String> = cluster
        .nodes
        .iter()
        .filter(|n| n.id != leader)
        .map(|n| n.client.to_string())
        .collect();
    let config = ClientConfig::new(survivors, ClusterId::from_name(CLUSTER));
    let mut sub = Subscription::open(config, StartFrom::Earliest).unwrap();
    let mut found: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut next = 0;
    while next < end {
        let r = sub
            .next_record(Some(DEADLINE))
            .unwrap()
            .expect("a record within the deadline");
        assert_eq!(r.offset, next, "every offset exactly once, in order");
        let value = String::from_utf8(r.record.value).unwrap();
        found.entry(value).or_default().push(r.offset);
        next += 1;
    }
    let duplicated: Vec<_> = found.iter().filter(|(_, at)| at.len() > 1).collect();
    assert!(duplicated.is_empty(), "stored twice: {duplicated:?}");
    for (value, offset) in &acked {
        assert_eq!(
            found.get(value).map(Vec::as_slice),
            Some(&[*offset][..]),
            "{value} acknowledged at {offset}"
        );
    }
    assert_eq!(end, 2 * RECORDS, "nothing but the records sent, each once");
}

/// ListOffsets by `timestamp` on `conn`: the (error code, offset, timestamp) answered.
fn offset_for_time(conn: &mut KafkaConn, timestamp: i64) -> (i16, i64, i64) {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    let mut p = ListOffsetsPartition::default();
    p.timestamp = timestamp;
    p.current_leader_epoch = -1;
    let mut t = ListOffsetsTopic::default();
    t.name = topic(CLUSTER);
    t.partitions = vec![p];
    let mut request = ListOffsetsRequest::default();
    request.replica_id = kafka_protocol::messages::BrokerId(-1);
    request.topics = vec![t];
    let offsets: ListOffsetsResponse = conn.call(ApiKey::ListOffsets, 7, &request);
    let r = &offsets.topics[0].partitions[0];
    (r.error_code, r.offset, r.timestamp)
}

/// Every probe answered as a search of every retained record would: the first record whose
/// timestamp is at least the probe (-1, -1 if none), and (-3) the first with the largest.
fn assert_lookups(conn: &mut KafkaConn, records: &[(u64, u64)], when: &str) {
    let (code, start, _) = offset_for_time(conn, -2);
    assert_eq!(code, 0);
    let kept: Vec<(u64, u64)> = records
        .iter()
        .copied()
        .filter(|&(o, _)| o >= start as u64)
        .collect();
    let mut probes: Vec<u64> = kept.iter().flat_map(|&(_, t)| [t - 1, t, t + 1]).collect();
    probes.sort_unstable();
    probes.dedup();
    for probe in probes {
        let expected = kept
            .iter()
            .find(|&&(_, t)| t >= probe)
            .map_or((0, -1, -1), |&(o, t)| (0, o as i64, t as i64));
        assert_eq!(
            offset_for_time(conn, probe as i64),
            expected,
            "timestamp {probe}, {when}"
        );
    }
    let largest = kept.iter().map(|&(_, t)| t).max().unwrap();
    let first_largest = kept.iter().find(|&&(_, t)| t == largest).unwrap();
    assert_eq!(
        offset_for_time(conn, -3),
        (0, first_largest.0 as i64, largest as i64),
        "the largest timestamp, {when}"
    );
}

#[test]
fn list_offsets_finds_records_by_timestamp_across_compaction_and_restart() {
    // Snapshots every MiB and no retention beyond them: the log start moves as records come.
    let mut cluster = Cluster::start_kafka(
        1,
        "auto",
        &["--snapshot-every-mib", "1", "--retain-mib", "0"],
    );
    cluster.wait_leader();
    let mut conn = KafkaConn::connect(kafka_addr(&cluster, 1));
    let mut client = Client::connect(client_config(&cluster)).unwrap();
    // Timestamps out of offset order (producers' clocks), with repeats; large and small
    // batches, native and Kafka ones alternating.
    let timestamp_of = |offset: u64| 1_700_000_000_000 + (offset * 7_919 % 97) * 10;
    let large = vec![b'x'; 60_000];
    let mut records: Vec<(u64, u64)> = Vec::new();
    for b in 0..60u64 {
        let base = records.len() as u64;
        let (count, value) = if b % 3 == 0 {
            (8, &large[..])
        } else {
            (3, &b"small"[..])
        };
        let batch: Vec<Record> = (base..base + count)
            .map(|offset| Record {
                key: None,
                value: value.to_vec(),
                timestamp_ms: timestamp_of(offset),
                headers: vec![],
            })
            .collect();
        let at = if b % 2 == 0 {
            client.append(&batch).unwrap().base_offset
        } else {
            let mut bytes = Vec::new();
            kafka::encode_records(&mut bytes, 0, 0, &batch);
            let (code, at) = produce_error(&mut conn, bytes);
            assert_eq!(code, 0);
            at as u64
        };
        assert_eq!(at, base);
        records.extend(
            batch
                .iter()
                .enumerate()
                .map(|(i, r)| (base + i as u64, r.timestamp_ms)),
        );
    }
    let deadline = Instant::now() + DEADLINE;
    while offset_for_time(&mut conn, -2).1 == 0 {
        assert!(Instant::now() < deadline, "the log start never moved");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_lookups(&mut conn, &records, "after compaction");

    // kcat's `-o s@<timestamp>` starts at the same offset.
    let probe = timestamp_of(records.len() as u64 - 5);
    let (_, expected, _) = offset_for_time(&mut conn, probe as i64);
    let broker = kafka_addr(&cluster, 1).to_string();
    let first = kcat(
        &[
            "-b",
            &broker,
            "-t",
            CLUSTER,
            "-p",
            "0",
            "-C",
            "-o",
            &format!("s@{probe}"),
            "-c",
            "1",
            "-f",
            "%o\n",
        ],
        "",
    );
    assert_eq!(first.trim(), expected.to_string());

    // A restarted node rebuilds the index from its log (the part its snapshot covers) and
    // from what it applies again.
    cluster.kill(1);
    cluster.spawn(1);
    cluster.wait_leader();
    let mut conn = KafkaConn::connect(kafka_addr(&cluster, 1));
    // Leading again, it applies its log anew: lookups see a record once it is readable.
    let deadline = Instant::now() + DEADLINE;
    while offset_for_time(&mut conn, -1).1 < records.len() as i64 {
        assert!(
            Instant::now() < deadline,
            "the restarted node never re-applied its log"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_lookups(&mut conn, &records, "after a restart");
}

#[test]
fn acks_zero_is_never_answered_and_a_failure_closes_the_connection() {
    let cluster = Cluster::start_kafka(3, "auto", &[]);
    let leader = cluster.wait_leader();
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let latest = |conn: &mut KafkaConn| offset_for_time(conn, -1).1;

    // Taken: not answered, the connection stays, the record commits.
    let mut conn = KafkaConn::connect(kafka_addr(&cluster, leader));
    conn.send(ApiKey::Produce, 9, &produce_request(0, kafka_batch(&["a"])));
    let deadline = Instant::now() + DEADLINE;
    while latest(&mut conn) < 1 {
        assert!(
            Instant::now() < deadline,
            "the acks=0 record never committed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Refused by the leader (a CRC mismatch): the connection is closed, nothing is appended.
    let mut bad = kafka_batch(&["b"]);
    *bad.last_mut().unwrap() ^= 1;
    let mut refused = KafkaConn::connect(kafka_addr(&cluster, leader));
    refused.send(ApiKey::Produce, 9, &produce_request(0, bad));
    assert!(
        refused.closed(),
        "a refused acks=0 produce left the connection open"
    );

    // Sent to a follower: it cannot lead the append, so it closes the connection (the
    // producer then refreshes its metadata and finds the leader).
    let mut at_follower = KafkaConn::connect(kafka_addr(&cluster, follower));
    at_follower.send(ApiKey::Produce, 9, &produce_request(0, kafka_batch(&["c"])));
    assert!(
        at_follower.closed(),
        "a follower kept an acks=0 producer it could not serve"
    );
    assert_eq!(latest(&mut conn), 1, "only the taken record was appended");
}
