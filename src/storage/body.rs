//! The hand-over from the blocking pipeline (compression, encryption) to an
//! async storage backend: fixed-size chunks through a bounded channel, so
//! memory is bounded by chunk size × depth whatever the backup's size.

use std::io::{self, Write};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

enum Chunk {
    Data(Bytes),
    /// The producer finished: everything before this is the whole object.
    End,
}

/// The producer went away without finishing: the object must be discarded.
#[derive(Debug, thiserror::Error)]
#[error("the backup stream stopped before it was complete")]
pub struct IncompleteBody;

impl IncompleteBody {
    /// Whether `err` only says the producer stopped early (its own error says why).
    pub fn is_cause_of(err: &anyhow::Error) -> bool {
        err.chain().any(|cause| {
            cause.is::<IncompleteBody>()
                || cause
                    .downcast_ref::<io::Error>()
                    .and_then(|io| io.get_ref())
                    .is_some_and(|inner| inner.is::<IncompleteBody>())
        })
    }
}

/// The receiving end: what a [`Storage`](super::Storage) stores.
pub struct Body {
    rx: mpsc::Receiver<Chunk>,
    ended: bool,
}

/// The sending end, written by blocking code. Dropping it without
/// [`finish`](BodyWriter::finish) tells the storage the object is incomplete.
pub struct BodyWriter {
    tx: mpsc::Sender<Chunk>,
    buf: BytesMut,
    chunk_size: usize,
}

pub fn body_channel(chunk_size: usize, depth: usize) -> (BodyWriter, Body) {
    let (tx, rx) = mpsc::channel(depth.max(1));
    let writer = BodyWriter {
        tx,
        buf: BytesMut::with_capacity(chunk_size),
        chunk_size: chunk_size.max(1),
    };
    (writer, Body { rx, ended: false })
}

impl Body {
    pub fn from_bytes(data: Vec<u8>) -> Self {
        let (tx, rx) = mpsc::channel(2);
        // Capacity 2 holds both messages, so these sends cannot fail.
        let _ = tx.try_send(Chunk::Data(Bytes::from(data)));
        let _ = tx.try_send(Chunk::End);
        Body { rx, ended: false }
    }

    /// The next chunk; `Ok(None)` once the producer has finished. An error means
    /// the producer stopped before finishing: the object must be discarded.
    pub async fn next(&mut self) -> io::Result<Option<Bytes>> {
        if self.ended {
            return Ok(None);
        }
        match self.rx.recv().await {
            Some(Chunk::Data(bytes)) => Ok(Some(bytes)),
            Some(Chunk::End) => {
                self.ended = true;
                Ok(None)
            }
            None => Err(io::Error::new(io::ErrorKind::UnexpectedEof, IncompleteBody)),
        }
    }
}

impl BodyWriter {
    fn send(&mut self, chunk: Chunk) -> io::Result<()> {
        self.tx.blocking_send(chunk).map_err(|_| {
            io::Error::new(io::ErrorKind::BrokenPipe, "storage stopped accepting data")
        })
    }

    fn flush_chunk(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let data = self.buf.split().freeze();
            self.send(Chunk::Data(data))?;
        }
        Ok(())
    }

    /// Sends what is buffered and marks the object complete.
    pub fn finish(mut self) -> io::Result<()> {
        self.flush_chunk()?;
        self.send(Chunk::End)
    }
}

impl Write for BodyWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.chunk_size - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == self.chunk_size {
            self.flush_chunk()?;
            self.buf.reserve(self.chunk_size);
        }
        Ok(n)
    }

    /// Chunks go out when full; flushing early would only make small chunks.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivers_fixed_size_chunks_then_end() {
        let (mut writer, mut body) = body_channel(4, 2);
        let producer = tokio::task::spawn_blocking(move || {
            writer.write_all(b"0123456789")?;
            writer.finish()
        });
        let mut chunks = Vec::new();
        while let Some(chunk) = body.next().await.unwrap() {
            chunks.push(chunk);
        }
        producer.await.unwrap().unwrap();
        assert_eq!(chunks, [&b"0123"[..], b"4567", b"89"]);
    }

    #[tokio::test]
    async fn a_writer_dropped_without_finish_is_an_error() {
        let (mut writer, mut body) = body_channel(4, 8);
        tokio::task::spawn_blocking(move || writer.write_all(b"01234"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&body.next().await.unwrap().unwrap()[..], b"0123");
        assert!(
            body.next().await.is_err(),
            "partial data must not look complete"
        );
    }
}
