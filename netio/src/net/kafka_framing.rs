//! Framing of a Kafka connection: every request is a 4-byte big-endian size, then that many
//! bytes (request header and body, which the node decodes). The size is checked against the
//! limit before any of the request is buffered.

/// Why the bytes of a Kafka connection are not requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KafkaFrameError {
    /// A negative size.
    #[error("negative Kafka request size {0}")]
    Negative(i32),
    /// A size beyond the limit.
    #[error("Kafka request of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The size announced.
        size: usize,
        /// The connection's limit.
        limit: usize,
    },
}

/// Room a Kafka connection's decoder keeps between requests; above it, room is given back.
/// Above librdkafka's default Produce batch (`batch.size`, 1 MB) and the same as
/// `FrameDecoder`'s: a producer streaming full batches must not have its buffer shrunk after
/// every request and regrown (reallocated and copied) for the next.
const KAFKA_RETAIN_BYTES: usize = 2 << 20;

/// Splits a Kafka connection's byte stream into requests.
#[derive(Debug)]
pub(super) struct KafkaFrameDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out as requests.
    start: usize,
    limit: usize,
}

impl KafkaFrameDecoder {
    pub(super) fn new(limit: usize) -> KafkaFrameDecoder {
        KafkaFrameDecoder {
            buf: Vec::new(),
            start: 0,
            limit,
        }
    }

    pub(super) fn feed(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
            // After a large request, give its room back (as `FrameDecoder` does).
            if self.buf.capacity() > KAFKA_RETAIN_BYTES && self.buf.len() <= KAFKA_RETAIN_BYTES / 2
            {
                self.buf.shrink_to(KAFKA_RETAIN_BYTES / 2);
            }
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as requests.
    pub(super) fn buffered_bytes(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Memory the decoder holds (its buffer's capacity).
    pub(super) fn held_bytes(&self) -> usize {
        self.buf.capacity()
    }

    /// The next whole request (without its size prefix), if buffered.
    pub(super) fn next_frame(&mut self) -> Result<Option<Vec<u8>>, KafkaFrameError> {
        let rest = &self.buf[self.start..];
        let Some(size) = rest.first_chunk::<4>().map(|s| i32::from_be_bytes(*s)) else {
            return Ok(None);
        };
        let size = usize::try_from(size).map_err(|_| KafkaFrameError::Negative(size))?;
        if size > self.limit {
            return Err(KafkaFrameError::TooLarge {
                size,
                limit: self.limit,
            });
        }
        if rest.len() < 4 + size {
            return Ok(None);
        }
        let frame = rest[4..4 + size].to_vec();
        self.start += 4 + size;
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_split_across_and_within_reads() {
        let mut d = KafkaFrameDecoder::new(100);
        let mut stream = Vec::new();
        for body in [&b"abc"[..], b"", b"0123456789"] {
            stream.extend_from_slice(&(body.len() as i32).to_be_bytes());
            stream.extend_from_slice(body);
        }
        let mut got = Vec::new();
        for byte in stream.chunks(2) {
            d.feed(byte);
            while let Some(frame) = d.next_frame().unwrap() {
                got.push(frame);
            }
        }
        assert_eq!(got, vec![b"abc".to_vec(), vec![], b"0123456789".to_vec()]);
    }

    #[test]
    fn room_for_full_producer_batches_is_kept_and_beyond_it_given_back() {
        let request = |body_bytes: usize| {
            let mut r = (body_bytes as i32).to_be_bytes().to_vec();
            r.resize(4 + body_bytes, 7);
            r
        };
        // A librdkafka producer's full batches (1 MB), back to back, the next one's first
        // bytes in the same read: the room for them stays.
        let mut d = KafkaFrameDecoder::new(16 << 20);
        let mut stream = request(1_000_000);
        stream.extend_from_slice(&request(1_000_000)[..1000]);
        d.feed(&stream);
        assert_eq!(d.next_frame().unwrap().map(|f| f.len()), Some(1_000_000));
        d.feed(&[7; 10]);
        assert!(d.held_bytes() >= 1_000_000, "kept {}", d.held_bytes());
        // After a request larger than the room kept, the room is given back.
        let mut d = KafkaFrameDecoder::new(16 << 20);
        let mut stream = request(KAFKA_RETAIN_BYTES * 2);
        stream.extend_from_slice(&request(10)[..6]);
        d.feed(&stream);
        assert!(d.next_frame().unwrap().is_some());
        d.feed(&[7; 8]);
        assert!(
            d.held_bytes() <= KAFKA_RETAIN_BYTES,
            "kept {}",
            d.held_bytes()
        );
        assert_eq!(d.next_frame().unwrap(), Some(vec![7; 10]));
    }

    #[test]
    fn a_size_beyond_the_limit_or_negative_is_refused_before_buffering() {
        let mut d = KafkaFrameDecoder::new(100);
        d.feed(&101i32.to_be_bytes());
        assert_eq!(
            d.next_frame(),
            Err(KafkaFrameError::TooLarge {
                size: 101,
                limit: 100
            })
        );
        let mut d = KafkaFrameDecoder::new(100);
        d.feed(&(-1i32).to_be_bytes());
        assert_eq!(d.next_frame(), Err(KafkaFrameError::Negative(-1)));
    }
}
