//! The HTTP driver: the chat payload the gateway itself would send upstream, POSTed to an
//! OpenAI-compatible endpoint (the fake upstream directly, nginx, LiteLLM, the gateway's own
//! OpenAI-compatible door). For the door, [`Report`] adds the `x-vra-*` headers that carry the
//! report, with report ids cycled exactly as the gRPC driver cycles them.
//!
//! A minimal HTTP/1.1 keep-alive client rather than reqwest: on 2 cores the load generator
//! shares a CPU with the upstream, and a general-purpose client cost enough per call to make
//! the *load generator* the bottleneck of the direct and nginx runs (nginx idled at ~60 %
//! while reqwest saturated its core). This client writes one pre-encoded request and parses
//! just the status line, `Content-Length` / chunked framing and `Connection: close` — about
//! what wrk does — so the servers, not the client, set the ceiling.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::drive::Target;
use crate::grpc::{PROMPT, SYSTEM_PROMPT};

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest response body accepted (the fake upstream's answers are a few KiB).
const MAX_BODY: usize = 16 << 20;

#[derive(Clone)]
pub struct HttpTarget {
    addr: Arc<str>,
    /// The request up to the end of the headers that change per call.
    head: Arc<[u8]>,
    /// The rest of the head and the body.
    tail: Arc<[u8]>,
    report: Option<Report>,
    stream: bool,
    idle: Arc<Mutex<Vec<Conn>>>,
}

/// The report fields the gateway's OpenAI door reads from headers.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// `x-vra-phase`, e.g. `REFINE` (routed to the primary).
    pub phase: &'static str,
    /// One report id for every call, instead of `reports` distinct ones cycled.
    pub hot: bool,
    pub reports: u64,
}

impl HttpTarget {
    /// `url` must be `http://HOST:PORT/PATH`.
    pub fn new(
        url: &str,
        model: &str,
        api_key: &str,
        stream: bool,
        report: Option<Report>,
    ) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("bad target {url}: only http:// URLs are supported"))?;
        let (addr, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if addr.is_empty() {
            return Err(format!("bad target {url}: no host"));
        }
        let mut body = json!({
            "model": model,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": PROMPT},
            ],
            "stream": stream,
        });
        if stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        let body = body.to_string();
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Accept: {}\r\nAuthorization: Bearer {api_key}\r\n",
            if stream {
                "text/event-stream"
            } else {
                "application/json"
            },
        );
        if let Some(report) = report {
            head.push_str(&format!(
                "x-vra-phase: {}\r\nx-vra-section-type: INTRODUCTION\r\nx-vra-section-id: 2.1\r\n",
                report.phase
            ));
        }
        let tail = format!("Content-Length: {}\r\n\r\n{body}", body.len());
        Ok(Self {
            addr: addr.into(),
            head: head.into_bytes().into(),
            tail: tail.into_bytes().into(),
            report,
            stream,
            idle: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// The request of call `seq`: with a report, its id in `x-vra-report-id` (the gRPC
    /// driver's ids: many distinct ones, so the budget is never the bottleneck, or one).
    fn request(&self, seq: u64) -> Vec<u8> {
        let mut request = Vec::with_capacity(self.head.len() + self.tail.len() + 64);
        request.extend_from_slice(&self.head);
        if let Some(report) = &self.report {
            let line = if report.hot {
                "x-vra-report-id: bench-hot-report\r\n".to_string()
            } else {
                format!(
                    "x-vra-report-id: bench-report-{:06}\r\n",
                    seq % report.reports.max(1)
                )
            };
            request.extend_from_slice(line.as_bytes());
        }
        request.extend_from_slice(&self.tail);
        request
    }

    fn take_idle(&self) -> Option<Conn> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn put_idle(&self, conn: Conn) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
    }
}

impl Target for HttpTarget {
    async fn call(&self, seq: u64) -> Result<Option<Instant>, String> {
        let mut conn = match self.take_idle() {
            Some(c) => c,
            None => Conn::open(&self.addr).await?,
        };
        let request = self.request(seq);
        let (first, reusable) = conn.exchange(&request, self.stream).await?;
        if reusable {
            self.put_idle(conn);
        }
        Ok(first.filter(|_| self.stream))
    }
}

/// One keep-alive connection and its read buffer (`buf[pos..]` is unread).
struct Conn {
    tcp: TcpStream,
    buf: Vec<u8>,
    pos: usize,
}

/// What the response head says about the body.
struct Head {
    status: u16,
    length: Option<usize>,
    chunked: bool,
    close: bool,
}

impl Conn {
    async fn open(addr: &str) -> Result<Conn, String> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
        Ok(Conn {
            tcp,
            buf: Vec::with_capacity(16 * 1024),
            pos: 0,
        })
    }

    fn unread(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Reads more bytes; an error at EOF.
    async fn fill(&mut self) -> Result<(), String> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 8 * 1024 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + 16 * 1024, 0);
        let n = self.tcp.read(&mut self.buf[len..]).await;
        self.buf.truncate(len + *n.as_ref().unwrap_or(&0));
        match n {
            Ok(0) => Err("connection closed mid-response".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("read: {e}")),
        }
    }

    /// Sends the request and reads the whole response. Returns when the first body byte was
    /// available, and whether the connection can be reused.
    async fn exchange(
        &mut self,
        request: &[u8],
        stream: bool,
    ) -> Result<(Option<Instant>, bool), String> {
        self.tcp
            .write_all(request)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let head = self.read_head().await?;
        let mut first = None;
        let mut mark_first = |conn: &Conn| {
            if first.is_none() && !conn.unread().is_empty() {
                first = Some(Instant::now());
            }
        };
        let body_start = self.buf.len() - self.unread().len();
        let mut body_bytes = 0usize;
        let ok = (200..300).contains(&head.status);
        if head.chunked {
            loop {
                let line = self.read_line().await?;
                let size_hex = line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size_hex, 16)
                    .map_err(|_| format!("bad chunk size {size_hex:?}"))?;
                if size == 0 {
                    // Trailers (none expected) end with an empty line.
                    while !self.read_line().await?.is_empty() {}
                    break;
                }
                body_bytes += size;
                if body_bytes > MAX_BODY {
                    return Err("response body too large".into());
                }
                while self.unread().len() < size + 2 {
                    mark_first(self);
                    self.fill().await?;
                }
                mark_first(self);
                self.pos += size + 2;
            }
        } else if let Some(len) = head.length {
            if len > MAX_BODY {
                return Err("response body too large".into());
            }
            body_bytes = len;
            while self.unread().len() < len {
                mark_first(self);
                self.fill().await?;
            }
            mark_first(self);
            self.pos += len;
        } else {
            // Delimited by EOF: read it all; the connection cannot be reused.
            loop {
                mark_first(self);
                body_bytes = self.unread().len();
                if body_bytes > MAX_BODY || self.fill().await.is_err() {
                    break;
                }
            }
            return if ok {
                Ok((first, false))
            } else {
                Err(format!("HTTP {}", head.status))
            };
        }
        if !ok {
            let excerpt = String::from_utf8_lossy(
                &self.buf[body_start..(body_start + body_bytes.min(120)).min(self.buf.len())],
            )
            .into_owned();
            return Err(format!("HTTP {}: {excerpt}", head.status));
        }
        if body_bytes == 0 {
            return Err(if stream { "empty stream" } else { "empty body" }.into());
        }
        Ok((first, !head.close))
    }

    /// Reads one CRLF-terminated line (without the CRLF).
    async fn read_line(&mut self) -> Result<String, String> {
        loop {
            if let Some(i) = self.unread().windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.unread()[..i]).into_owned();
                self.pos += i + 2;
                return Ok(line);
            }
            if self.unread().len() > MAX_HEAD {
                return Err("line too long".into());
            }
            self.fill().await?;
        }
    }

    async fn read_head(&mut self) -> Result<Head, String> {
        let end = loop {
            if let Some(i) = self.unread().windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if self.unread().len() > MAX_HEAD {
                return Err("response head too large".into());
            }
            self.fill().await?;
        };
        let text = std::str::from_utf8(&self.unread()[..end])
            .map_err(|_| "response head is not UTF-8".to_string())?;
        let head = parse_head(text)?;
        self.pos += end + 4;
        Ok(head)
    }
}

fn parse_head(text: &str) -> Result<Head, String> {
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut head = Head {
        status,
        length: None,
        chunked: false,
        close: status_line.starts_with("HTTP/1.0"),
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            head.length = Some(
                value
                    .parse()
                    .map_err(|_| format!("bad content-length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            head.close = value.eq_ignore_ascii_case("close");
        }
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn parses_heads() {
        let h =
            parse_head("HTTP/1.1 200 OK\r\nContent-Length: 12\r\nconnection: keep-alive").unwrap();
        assert_eq!(
            (h.status, h.length, h.chunked, h.close),
            (200, Some(12), false, false)
        );
        let h = parse_head("HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\nConnection: close")
            .unwrap();
        assert_eq!(
            (h.status, h.length, h.chunked, h.close),
            (503, None, true, true)
        );
        assert!(parse_head("garbage").is_err());
    }

    /// A canned server: answers each request with the next response, in pieces.
    async fn serve(responses: Vec<&'static [u8]>) -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            for r in responses {
                let _ = s.read(&mut buf).await.unwrap();
                for piece in r.chunks(7) {
                    s.write_all(piece).await.unwrap();
                    tokio::task::yield_now().await;
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn reads_length_and_chunked_bodies_on_one_connection() {
        let addr = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\ndata:\r\n3\r\n ok\r\n0\r\n\r\n",
            b"HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\nboom",
        ])
        .await;
        let t = HttpTarget::new(
            &format!("http://{addr}/v1/chat/completions"),
            "m",
            "k",
            true,
            None,
        )
        .unwrap();
        assert!(t.call(0).await.unwrap().is_some());
        assert!(t.call(1).await.unwrap().is_some());
        let err = t.call(2).await.unwrap_err();
        assert!(err.contains("HTTP 500: boom"), "{err}");
    }

    #[test]
    fn door_requests_carry_the_report_in_headers() {
        let report = Report {
            phase: "REFINE",
            hot: false,
            reports: 10,
        };
        let t = HttpTarget::new(
            "http://h:1/v1/chat/completions",
            "vra-auto",
            "k",
            false,
            Some(report),
        )
        .unwrap();
        let text = String::from_utf8(t.request(13)).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains("\r\nx-vra-report-id: bench-report-000003\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nx-vra-phase: REFINE\r\n"), "{head}");
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
        let hot = HttpTarget::new(
            "http://h:1/v1",
            "m",
            "k",
            false,
            Some(Report {
                hot: true,
                ..report
            }),
        )
        .unwrap();
        assert_eq!(hot.request(1), hot.request(2));
        let plain = HttpTarget::new("http://h:1/v1", "m", "k", false, None).unwrap();
        assert!(
            !String::from_utf8(plain.request(1))
                .unwrap()
                .contains("x-vra")
        );
    }
}
