//! HTTP/1.1 requests held to the bounds HTTP/2 holds them to.
//!
//! HTTP/2 refuses a header block over `--max-header-bytes` before it is buffered, but the HTTP/1
//! parser buffers a request head of up to about 400 KB, and a peer may send that much on every
//! connection and keep it there. So each connection is read through [`Http1Bound`], which knows
//! the protocol from its first bytes (the HTTP/2 connection preface, or anything else) and, on
//! HTTP/1, lets through no more than a request may hold before it is answered: a head of at
//! most `--max-header-bytes`, and in all at most the head, a body of `--max-request-bytes` and
//! room for chunked framing. A peer that sends more before anything is written back is
//! disconnected. Each answer the server writes starts the count again, so keep-alive
//! connections and pipelined requests within the bound go on as before.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// What starts every HTTP/2 connection (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Room for the framing of a chunked body beside the body itself.
const CHUNKING_ROOM: usize = 16 * 1024;

/// The bounds of an HTTP/1 request, from the server's flags.
#[derive(Debug, Clone, Copy)]
pub struct RequestBounds {
    pub max_header_bytes: usize,
    pub max_request_bytes: usize,
}

impl RequestBounds {
    fn unanswered(self) -> usize {
        self.max_header_bytes + self.max_request_bytes + CHUNKING_ROOM
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// This many bytes have matched the HTTP/2 preface so far.
    Unknown(usize),
    Http1,
    Http2,
}

/// Where the reader is in a request head: how far into the blank line that ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadEnd {
    /// Inside a line.
    Line,
    /// Just after a line feed.
    LineFeed,
    /// Just after a line feed and a carriage return.
    Return,
}

/// A connection's stream, read as [`crate::http1`] describes.
#[derive(Debug)]
pub struct Http1Bound<S> {
    inner: S,
    bounds: RequestBounds,
    protocol: Protocol,
    /// Bytes read since the server last wrote.
    unanswered: usize,
    /// Bytes of the head being read, `None` once it has ended.
    head: Option<usize>,
    head_end: HeadEnd,
}

impl<S> Http1Bound<S> {
    pub fn new(inner: S, bounds: RequestBounds) -> Self {
        Self { inner, bounds, protocol: Protocol::Unknown(0), unanswered: 0, head: Some(0), head_end: HeadEnd::Line }
    }

    /// How many bytes may be read now: one more than the bounds allow, so that going over shows.
    fn allowance(&self) -> usize {
        let total = self.bounds.unanswered().saturating_sub(self.unanswered);
        let head = self.head.map_or(usize::MAX, |read| self.bounds.max_header_bytes.saturating_sub(read));
        total.min(head) + 1
    }

    /// Takes note of bytes read; an error if they go over a bound.
    fn read(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Protocol::Unknown(matched) = self.protocol {
            let seen = bytes.len().min(PREFACE.len() - matched);
            self.protocol = if bytes[..seen] != PREFACE[matched..matched + seen] {
                Protocol::Http1
            } else if matched + seen == PREFACE.len() {
                Protocol::Http2
            } else {
                Protocol::Unknown(matched + seen)
            };
        }
        if self.protocol == Protocol::Http2 {
            return Ok(());
        }
        self.unanswered += bytes.len();
        if let Some(read) = self.head {
            match bytes.iter().position(|byte| self.head_ended_at(*byte)) {
                Some(end) if read + end < self.bounds.max_header_bytes => self.head = None,
                Some(_) | None if read + bytes.len() > self.bounds.max_header_bytes => {
                    return Err(refused(format!(
                        "an HTTP/1 request head over {} bytes (--max-header-bytes)",
                        self.bounds.max_header_bytes
                    )));
                }
                _ => self.head = Some(read + bytes.len()),
            }
        }
        if self.unanswered > self.bounds.unanswered() {
            return Err(refused(format!(
                "over {} bytes of HTTP/1 requests before an answer (--max-header-bytes and --max-request-bytes)",
                self.bounds.unanswered()
            )));
        }
        Ok(())
    }

    /// Whether `byte` ends the head: a blank line, `\n\n` or `\r\n\r\n` as HTTP/1 parsers take it.
    fn head_ended_at(&mut self, byte: u8) -> bool {
        let (next, ended) = match (self.head_end, byte) {
            (HeadEnd::LineFeed | HeadEnd::Return, b'\n') => (HeadEnd::Line, true),
            (_, b'\n') => (HeadEnd::LineFeed, false),
            (HeadEnd::LineFeed, b'\r') => (HeadEnd::Return, false),
            _ => (HeadEnd::Line, false),
        };
        self.head_end = next;
        ended
    }

    /// The server wrote: the requests read so far are answered, and the next begins with a head.
    fn wrote(&mut self, written: usize) {
        if written > 0 && self.protocol == Protocol::Http1 {
            self.unanswered = 0;
            if self.head.is_none() {
                self.head = Some(0);
                self.head_end = HeadEnd::Line;
            }
        }
    }
}

fn refused(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

impl<S: AsyncRead + Unpin> AsyncRead for Http1Bound<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.protocol == Protocol::Http2 {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let allowance = this.allowance();
        if buf.remaining() <= allowance {
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            return Poll::Ready(this.read(&buf.filled()[before..]));
        }
        // Near a bound, no more is taken from the peer than the bound leaves.
        let mut room = vec![0; allowance];
        let mut limited = ReadBuf::new(&mut room);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut limited))?;
        this.read(limited.filled())?;
        buf.put_slice(limited.filled());
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Http1Bound<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.wrote(written);
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        this.wrote(written);
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for Http1Bound<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: RequestBounds = RequestBounds { max_header_bytes: 64, max_request_bytes: 100 };

    fn reader() -> Http1Bound<()> {
        Http1Bound::new((), BOUNDS)
    }

    #[test]
    fn a_head_within_the_bound_passes_whatever_its_line_endings() {
        for head in ["GET / HTTP/1.1\r\nHost: a\r\n\r\n", "GET / HTTP/1.1\nHost: a\n\n"] {
            let mut reader = reader();
            reader.read(head.as_bytes()).unwrap();
            assert_eq!(reader.head, None, "{head:?} ended");
        }
    }

    #[test]
    fn a_head_over_the_bound_is_refused_split_or_whole() {
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(64));
        assert!(reader().read(long.as_bytes()).is_err());
        let mut reader = reader();
        let (first, rest) = long.as_bytes().split_at(40);
        reader.read(first).unwrap();
        assert!(reader.read(rest).is_err());
    }

    #[test]
    fn a_body_may_follow_its_head_up_to_the_bound_and_an_answer_starts_again() {
        let mut reader = reader();
        reader.read(b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\n").unwrap();
        reader.read(&[b'x'; 100]).unwrap();
        reader.wrote(10);
        reader.read(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        reader.read(&vec![b'x'; BOUNDS.unanswered() - 18]).unwrap();
        assert!(reader.read(b"x").is_err(), "past the bound before an answer");
    }

    #[test]
    fn http2_is_told_by_its_preface_and_left_alone() {
        let mut reader = reader();
        reader.read(&PREFACE[..5]).unwrap();
        reader.read(&PREFACE[5..]).unwrap();
        assert_eq!(reader.protocol, Protocol::Http2);
        reader.read(&vec![0; 10_000]).unwrap();
        let mut http1 = super::Http1Bound::new((), BOUNDS);
        http1.read(b"PUT / HTTP/1.1\r\n").unwrap();
        assert_eq!(http1.protocol, Protocol::Http1);
    }
}
