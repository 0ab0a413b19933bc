//! Incremental decoding of streamed completions, for every wire format (OpenAI's Server-Sent
//! Events, Ollama's NDJSON, ...).
//!
//! Network chunks split anywhere — inside a line, inside a UTF-8 character, inside `[DONE]`.
//! [`LineBuffer`] only releases complete lines, so everything above it sees whole lines and
//! whole characters. Each wire format has a small [`Decoder`], beside its JSON shapes, that turns lines into
//! [`StreamEvent`]s; [`decode`] drives one over an HTTP body with an idle timeout and makes a
//! stream that ends without its terminal event an error ([`ProviderError::Truncated`]).
//!
//! # Bounded memory, linear time
//!
//! A stream as a whole is not capped: a long generation is legitimate, and its lines are
//! handed on and dropped as soon as they are complete. What an upstream could make the gateway
//! hold is the one line it has not finished, so that is capped: a line longer than
//! `VRA_MAX_STREAM_LINE_BYTES` ([`BodyLimits::line_bytes`](super::BodyLimits::line_bytes)) — finished or
//! still pending — fails the stream with [`ProviderError::TooLarge`] and the rest is not read.
//! An SSE event may span several `data:` lines; [`SseEvents`](super::sse::SseEvents) caps the data it accumulates
//! for one event at the same limit. Between two chunks the buffer holds at most the pending
//! line (the limit, and a `\r` that may start its line ending); while a chunk is being split,
//! at most that plus the chunk.
//!
//! The splitter is linear in its input: it remembers how far it has searched for `\n`, so a
//! long line that arrives in many small chunks is scanned once, not once per chunk; consumed
//! lines are dropped by moving the pending tail to the front, and each byte is moved at most
//! once.
//!
//! Why not an SSE crate: OpenAI's use of SSE is one `data:` line per event; the line buffer is
//! the part that needs care and it is shared with NDJSON, so one small tested module serves
//! both formats.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::BodyLimits;
use super::{EventStream, ProviderError, StreamEvent};

/// What [`ProviderError::TooLarge`] names when one line of a stream is past its limit.
pub const TOO_LARGE_LINE: &str = "stream line";
/// What [`ProviderError::TooLarge`] names when the data of one SSE event is past its limit.
pub const TOO_LARGE_EVENT: &str = "stream event";

/// Accumulates bytes and yields complete lines (without `\n` or `\r\n`), none longer than
/// its limit.
#[derive(Debug)]
pub struct LineBuffer {
    buf: Vec<u8>,
    /// Where the pending (not yet returned) bytes begin.
    start: usize,
    /// Where the search for the next `\n` resumes: `buf[start..scanned]` holds none.
    scanned: usize,
    /// Longest line, in bytes, not counting its `\n` or `\r\n`.
    max_line: usize,
    /// What the tests check: work and memory linear in, and bounded by, the input.
    #[cfg(test)]
    stats: Stats,
}

/// Counters of a [`LineBuffer`]'s work, kept for the tests only.
#[cfg(test)]
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    /// Bytes examined by the `\n` search.
    examined: usize,
    /// Bytes moved to the front by compaction.
    moved: usize,
    /// Most bytes the buffer held at once.
    peak: usize,
}

impl Default for LineBuffer {
    /// A buffer with the default `VRA_MAX_STREAM_LINE_BYTES`.
    fn default() -> Self {
        Self::new(BodyLimits::default().line_bytes)
    }
}

impl LineBuffer {
    /// A buffer whose lines may be at most `max_line` bytes long (without the line ending).
    pub fn new(max_line: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            max_line,
            #[cfg(test)]
            stats: Stats::default(),
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(chunk);
        #[cfg(test)]
        {
            self.stats.peak = self.stats.peak.max(self.buf.len());
        }
    }

    /// The next complete line, if one is buffered. A line longer than the limit is an error
    /// ([`ProviderError::TooLarge`]); so is one that is not UTF-8.
    pub fn next_line(&mut self) -> Option<Result<&str, ProviderError>> {
        let from = self.scanned;
        let found = self.buf[from..].iter().position(|&b| b == b'\n');
        #[cfg(test)]
        {
            self.stats.examined += found.map_or(self.buf.len() - from, |i| i + 1);
        }
        let Some(i) = found else {
            self.scanned = self.buf.len();
            return None;
        };
        let nl = from + i;
        let line_start = self.start;
        self.start = nl + 1;
        self.scanned = self.start;
        let mut line = &self.buf[line_start..nl];
        if let [head @ .., b'\r'] = line {
            line = head;
        }
        if line.len() > self.max_line {
            return Some(Err(self.too_large()));
        }
        Some(
            std::str::from_utf8(line)
                .map_err(|_| ProviderError::Malformed("invalid UTF-8 in stream".into())),
        )
    }

    /// Fails when the unfinished last line is already longer than the limit (a `\r` at its
    /// end may still be part of its line ending and does not count).
    fn check_pending(&self) -> Result<(), ProviderError> {
        let pending = match self.pending() {
            [head @ .., b'\r'] => head,
            p => p,
        };
        if pending.len() > self.max_line {
            return Err(self.too_large());
        }
        Ok(())
    }

    fn too_large(&self) -> ProviderError {
        ProviderError::TooLarge {
            what: TOO_LARGE_LINE,
            limit: self.max_line,
        }
    }

    /// Drops consumed lines so the buffer holds only the pending bytes. When lines are taken
    /// until none is left (as [`feed`] does), each byte is moved at most once: it is moved only
    /// after the line before it was consumed, and then no `\n` precedes it any more, so the
    /// next consumed line takes it along instead of moving it again.
    fn compact(&mut self) {
        if self.start > 0 {
            #[cfg(test)]
            {
                self.stats.moved += self.buf.len() - self.start;
            }
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
    }

    /// Bytes of an unfinished last line.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// A wire format's line-level state machine.
pub trait Decoder: Send + 'static {
    /// Handles one complete line, pushing any events it completes.
    fn line(&mut self, line: &str, out: &mut VecDeque<StreamEvent>) -> Result<(), ProviderError>;
    /// Called when the body ends, for a format that may end its last line without `\n`.
    fn finish(&mut self, rest: &str, out: &mut VecDeque<StreamEvent>) -> Result<(), ProviderError> {
        if rest.trim().is_empty() {
            Ok(())
        } else {
            self.line(rest, out)
        }
    }
}

/// Feeds a chunk through the line buffer and decoder. Used by [`decode`] and by the tests.
/// Fails with [`ProviderError::TooLarge`] when a line — complete, or still unfinished after
/// this chunk — is longer than the buffer's limit.
pub fn feed(
    lines: &mut LineBuffer,
    decoder: &mut impl Decoder,
    chunk: &[u8],
    out: &mut VecDeque<StreamEvent>,
) -> Result<(), ProviderError> {
    lines.push(chunk);
    while let Some(line) = lines.next_line() {
        decoder.line(line?, out)?;
    }
    lines.compact();
    lines.check_pending()
}

/// Drives `decoder` over `body`: yields deltas, then the terminal `Done`, and then ends. A
/// silent upstream is cut after `idle`; a body that ends before `Done` yields `Truncated`; a
/// line longer than `max_line` bytes yields [`ProviderError::TooLarge`].
pub fn decode<S, D>(body: S, decoder: D, idle: Duration, max_line: usize) -> EventStream
where
    S: Stream<Item = Result<Bytes, ProviderError>> + Send + 'static,
    D: Decoder,
{
    struct State<S, D> {
        /// The attempt span, still open while the stream is read: it gets the usage at the end.
        span: tracing::Span,
        body: std::pin::Pin<Box<S>>,
        decoder: D,
        lines: LineBuffer,
        out: VecDeque<StreamEvent>,
        finished: bool,
    }
    let state = State {
        span: tracing::Span::current(),
        body: Box::pin(body),
        decoder,
        lines: LineBuffer::new(max_line),
        out: VecDeque::new(),
        finished: false,
    };
    Box::pin(futures_util::stream::unfold(
        state,
        move |mut st| async move {
            loop {
                if st.finished {
                    return None;
                }
                if let Some(ev) = st.out.pop_front() {
                    if let StreamEvent::Done {
                        model,
                        usage,
                        finish_reason,
                    } = &ev
                    {
                        crate::telemetry::record_response(
                            &st.span,
                            model,
                            *usage,
                            finish_reason,
                            None,
                        );
                        st.finished = true;
                    }
                    return Some((Ok(ev), st));
                }
                let next = match tokio::time::timeout(idle, st.body.next()).await {
                    Err(_) => {
                        st.finished = true;
                        return Some((Err(ProviderError::StreamIdle(idle.as_millis() as u64)), st));
                    }
                    Ok(next) => next,
                };
                let result = match next {
                    Some(Ok(chunk)) => feed(&mut st.lines, &mut st.decoder, &chunk, &mut st.out),
                    Some(Err(e)) => Err(e),
                    None => {
                        let rest = String::from_utf8_lossy(st.lines.pending()).into_owned();
                        match st.decoder.finish(&rest, &mut st.out) {
                            Ok(()) if st.out.is_empty() => Err(ProviderError::Truncated),
                            Ok(()) => {
                                // Whatever finish produced is delivered; if it holds no Done
                                // the stream still ends as truncated.
                                if !st.out.iter().any(|e| matches!(e, StreamEvent::Done { .. })) {
                                    st.out.clear();
                                    Err(ProviderError::Truncated)
                                } else {
                                    Ok(())
                                }
                            }
                            Err(e) => Err(e),
                        }
                    }
                };
                if let Err(e) = result {
                    st.finished = true;
                    return Some((Err(e), st));
                }
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::TokenUsage;
    use crate::providers::anthropic::MessagesDecoder;
    use crate::providers::ollama::NdjsonDecoder;
    use crate::providers::openai::SseDecoder;
    use proptest::prelude::*;

    fn run(
        decoder: &mut impl Decoder,
        chunks: &[&[u8]],
    ) -> Result<Vec<StreamEvent>, ProviderError> {
        run_limited(decoder, chunks, BodyLimits::default().line_bytes)
    }

    /// Feeds `chunks` through a line buffer of `max_line`, then ends the body, as [`decode`]
    /// does.
    fn run_limited(
        decoder: &mut impl Decoder,
        chunks: &[&[u8]],
        max_line: usize,
    ) -> Result<Vec<StreamEvent>, ProviderError> {
        let mut lines = LineBuffer::new(max_line);
        let mut out = VecDeque::new();
        for c in chunks {
            feed(&mut lines, decoder, c, &mut out)?;
        }
        let rest = String::from_utf8_lossy(lines.pending()).into_owned();
        decoder.finish(&rest, &mut out)?;
        Ok(out.into_iter().collect())
    }

    const SSE: &str = concat!(
        ": keep-alive\n\n",
        "data: {\"model\":\"gpt-4o-2024\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
        "data: {\"model\":\"gpt-4o-2024\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Grüße, \"}}]}\r\n\r\n",
        "data: {\"model\":\"gpt-4o-2024\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"wörld 🌍\"},\"finish_reason\":null}]}\n\n",
        "\n",
        "data: {\"model\":\"gpt-4o-2024\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n",
        "data: {\"model\":\"gpt-4o-2024\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3,\"total_tokens\":10}}\n\n",
        "data: [DONE]\n\n",
    );

    /// Anthropic's event sequence (the fixture of its decoder's own tests).
    const ANTHROPIC: &str = crate::providers::anthropic::tests::STREAM;

    const NDJSON: &str = concat!(
        "{\"model\":\"llama3:8b\",\"message\":{\"role\":\"assistant\",\"content\":\"Grüße, \"},\"done\":false}\n",
        "{\"model\":\"llama3:8b\",\"message\":{\"role\":\"assistant\",\"content\":\"wörld 🌍\"},\"done\":false}\n",
        "{\"model\":\"llama3:8b\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",\"prompt_eval_count\":7,\"eval_count\":3}\n",
    );

    fn expected(model: &str, finish: &str) -> Vec<StreamEvent> {
        vec![
            StreamEvent::Delta("Grüße, ".into()),
            StreamEvent::Delta("wörld 🌍".into()),
            StreamEvent::Done {
                model: model.into(),
                usage: TokenUsage::reported(7, 3),
                finish_reason: finish.into(),
            },
        ]
    }

    #[test]
    fn sse_whole() {
        let got = run(&mut SseDecoder::default(), &[SSE.as_bytes()]).unwrap();
        assert_eq!(got, expected("gpt-4o-2024", "length"));
    }

    /// A stream as llama-cpp-python 0.3.36's server sends it (recorded, abridged): `\n`
    /// separators, `"logprobs": null`, a role-only first delta, the finish reason in a chunk with
    /// an empty delta, no usage chunk (it ignores `stream_options`), and an sse-starlette
    /// keep-alive comment (`: ping - <time>`, every 15 s) between events.
    #[test]
    fn sse_as_llama_cpp_python_sends_it() {
        const LLAMA_CPP: &str = concat!(
            "data: {\"id\": \"chatcmpl-1\", \"model\": \"gpt-4o\", \"created\": 1796065371, \"object\": \"chat.completion.chunk\", \"choices\": [{\"index\": 0, \"delta\": {\"role\": \"assistant\"}, \"logprobs\": null, \"finish_reason\": null}]}\n\n",
            "data: {\"id\": \"chatcmpl-1\", \"model\": \"gpt-4o\", \"created\": 1796065371, \"object\": \"chat.completion.chunk\", \"choices\": [{\"index\": 0, \"delta\": {\"content\": \"Say\"}, \"logprobs\": null, \"finish_reason\": null}]}\n\n",
            ": ping - 2026-11-30 19:03:00.123456+00:00\n\n",
            "data: {\"id\": \"chatcmpl-1\", \"model\": \"gpt-4o\", \"created\": 1796065371, \"object\": \"chat.completion.chunk\", \"choices\": [{\"index\": 0, \"delta\": {\"content\": \" hello\"}, \"logprobs\": null, \"finish_reason\": null}]}\n\n",
            "data: {\"id\": \"chatcmpl-1\", \"model\": \"gpt-4o\", \"created\": 1796065371, \"object\": \"chat.completion.chunk\", \"choices\": [{\"index\": 0, \"delta\": {}, \"logprobs\": null, \"finish_reason\": \"length\"}]}\n\n",
            "data: [DONE]\n\n",
        );
        let want = vec![
            StreamEvent::Delta("Say".into()),
            StreamEvent::Delta(" hello".into()),
            StreamEvent::Done {
                model: "gpt-4o".into(),
                usage: TokenUsage::default(),
                finish_reason: "length".into(),
            },
        ];
        let got = run(&mut SseDecoder::default(), &[LLAMA_CPP.as_bytes()]).unwrap();
        assert_eq!(got, want);
        // Split inside the ping comment: still ignored.
        let bytes = LLAMA_CPP.as_bytes();
        let at = LLAMA_CPP.find("ping").unwrap() + 2;
        let got = run(&mut SseDecoder::default(), &[&bytes[..at], &bytes[at..]]).unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn ndjson_whole() {
        let got = run(&mut NdjsonDecoder, &[NDJSON.as_bytes()]).unwrap();
        assert_eq!(got, expected("llama3:8b", "stop"));
    }

    #[test]
    fn sse_split_inside_done_and_inside_a_character() {
        let bytes = SSE.as_bytes();
        let done_at = SSE.find("[DONE]").unwrap() + 3; // inside "[DONE]"
        let umlaut = SSE.find('ü').unwrap() + 1; // inside the two-byte 'ü'
        let got = run(
            &mut SseDecoder::default(),
            &[&bytes[..umlaut], &bytes[umlaut..done_at], &bytes[done_at..]],
        )
        .unwrap();
        assert_eq!(got, expected("gpt-4o-2024", "length"));
    }

    #[test]
    fn sse_done_without_trailing_newline() {
        let text = SSE.trim_end();
        let got = run(&mut SseDecoder::default(), &[text.as_bytes()]).unwrap();
        assert_eq!(got.last(), expected("gpt-4o-2024", "length").last());
    }

    #[test]
    fn missing_terminal_event_yields_no_done() {
        let cut = &SSE[..SSE.find("data: [DONE]").unwrap()];
        let got = run(&mut SseDecoder::default(), &[cut.as_bytes()]).unwrap();
        assert!(!got.iter().any(|e| matches!(e, StreamEvent::Done { .. })));
        let cut = &NDJSON[..NDJSON.rfind("{\"model\"").unwrap()];
        let got = run(&mut NdjsonDecoder, &[cut.as_bytes()]).unwrap();
        assert!(!got.iter().any(|e| matches!(e, StreamEvent::Done { .. })));
    }

    #[test]
    fn malformed_lines_are_typed_errors() {
        let err = run(&mut SseDecoder::default(), &[b"data: {not json}\n\n"]).unwrap_err();
        assert!(matches!(err, ProviderError::Malformed(_)));
        let err = run(&mut NdjsonDecoder, &[b"{\"error\":\"model not found\"}\n"]).unwrap_err();
        assert_eq!(err, ProviderError::Upstream("model not found".into()));
        let err = run(&mut NdjsonDecoder, &[b"\xff\xfe\n"]).unwrap_err();
        assert!(matches!(err, ProviderError::Malformed(_)));
    }

    /// Hands every line on as it is, to test the line buffer on its own.
    struct Echo;

    impl Decoder for Echo {
        fn line(
            &mut self,
            line: &str,
            out: &mut VecDeque<StreamEvent>,
        ) -> Result<(), ProviderError> {
            out.push_back(StreamEvent::Delta(line.to_string()));
            Ok(())
        }
    }

    fn echoed(events: &[StreamEvent]) -> Vec<&str> {
        events
            .iter()
            .map(|e| match e {
                StreamEvent::Delta(l) => l.as_str(),
                StreamEvent::Done { .. } => unreachable!("Echo makes no Done"),
            })
            .collect()
    }

    const LINE: ProviderError = ProviderError::TooLarge {
        what: TOO_LARGE_LINE,
        limit: 16,
    };

    #[test]
    fn a_line_at_the_limit_passes_and_one_byte_more_fails() {
        let at = "0123456789abcdef"; // 16 bytes
        let got = run_limited(&mut Echo, &[format!("{at}\r\n{at}\n").as_bytes()], 16).unwrap();
        assert_eq!(echoed(&got), [at, at]);
        // Longer, complete in one chunk.
        let err = run_limited(&mut Echo, &[format!("{at}!\n").as_bytes()], 16).unwrap_err();
        assert_eq!(err, LINE);
        // Longer and unfinished: fails with the chunk that makes it too long, before its end.
        let mut lines = LineBuffer::new(16);
        let mut out = VecDeque::new();
        feed(&mut lines, &mut Echo, at.as_bytes(), &mut out).unwrap();
        feed(&mut lines, &mut Echo, b"\r", &mut out).unwrap(); // may still end as "\r\n"
        let err = feed(&mut lines, &mut Echo, b"!", &mut out).unwrap_err();
        assert_eq!(err, LINE);
        assert!(out.is_empty());
        // Short lines never add up: only one line is held at a time.
        let many = "0123456789\n".repeat(1000);
        let got = run_limited(&mut Echo, &[many.as_bytes()], 16).unwrap();
        assert_eq!(got.len(), 1000);
    }

    #[test]
    fn too_large_falls_back_and_is_not_retried() {
        assert!(
            !LINE.is_retryable(),
            "the same request gets the same answer"
        );
        assert!(LINE.is_provider_fault());
        assert_eq!(LINE.kind(), "response_too_large");
        assert_eq!(LINE.to_string(), "stream line larger than 16 bytes");
    }

    #[test]
    fn sse_event_data_is_capped_across_lines() {
        // Each event is split over two `data:` lines and stays within 32 bytes: fine, forever.
        let event = "data: {\"choices\":\ndata: []}\n\n";
        let body = event.repeat(200);
        let got = run_limited(&mut SseDecoder::new(32), &[body.as_bytes()], 32).unwrap();
        assert!(got.is_empty(), "{got:?}");
        // Short lines that never end their event add up to too much data.
        let endless = "data: xxxxxxxxxxxxxxx\n".repeat(3); // 15 + 1 + 15 + 1 + 15 = 47 > 32
        let err = run_limited(&mut SseDecoder::new(32), &[endless.as_bytes()], 32).unwrap_err();
        assert_eq!(
            err,
            ProviderError::TooLarge {
                what: TOO_LARGE_EVENT,
                limit: 32
            }
        );
    }

    #[test]
    fn one_long_line_in_one_byte_chunks_is_scanned_once() {
        const N: usize = 200_000;
        let mut lines = LineBuffer::new(N);
        let mut out = VecDeque::new();
        for _ in 0..N {
            feed(&mut lines, &mut Echo, b"x", &mut out).unwrap();
        }
        feed(&mut lines, &mut Echo, b"\n", &mut out).unwrap();
        assert_eq!(out.len(), 1);
        // Rescanning the pending bytes per chunk would examine N²/2 = 2·10¹⁰ bytes.
        assert_eq!(lines.stats.examined, N + 1, "each byte examined once");
        assert_eq!(lines.stats.moved, 0, "nothing moved while the line grows");
        assert_eq!(lines.stats.peak, N + 1);
        assert!(lines.pending().is_empty());
    }

    #[tokio::test]
    async fn decode_cuts_an_endless_line_and_reads_no_further() {
        let polled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = polled.clone();
        let first = Bytes::from_static(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: {\"x\":\"",
        );
        let body = futures_util::stream::iter([first])
            .chain(futures_util::stream::repeat(Bytes::from_static(
                &[b'x'; 100],
            )))
            .map(move |chunk| {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok::<_, ProviderError>(chunk)
            });
        let mut events = decode(body, SseDecoder::new(1024), Duration::from_secs(5), 1024);
        assert_eq!(
            events.next().await,
            Some(Ok(StreamEvent::Delta("Hi".into())))
        );
        assert_eq!(
            events.next().await,
            Some(Err(ProviderError::TooLarge {
                what: TOO_LARGE_LINE,
                limit: 1024
            }))
        );
        assert_eq!(events.next().await, None);
        // 10 + 100·k > 1024 first at k = 11: the first chunk and 11 fillers, nothing more.
        assert_eq!(polled.load(std::sync::atomic::Ordering::SeqCst), 12);
    }

    fn splits(len: usize) -> impl Strategy<Value = Vec<usize>> {
        proptest::collection::vec(0..=len, 0..24).prop_map(|mut v| {
            v.sort_unstable();
            v
        })
    }

    fn chunked(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut prev = 0;
        for &c in cuts {
            out.push(bytes[prev..c].to_vec());
            prev = c;
        }
        out.push(bytes[prev..].to_vec());
        out
    }

    /// The longest line of a fixture, without its line ending.
    fn longest_line(text: &str) -> usize {
        text.split('\n')
            .map(|l| l.trim_end_matches('\r').len())
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn one_byte_chunks_parse_the_same() {
        for (text, expect) in [
            (SSE, expected("gpt-4o-2024", "length")),
            (NDJSON, expected("llama3:8b", "stop")),
        ] {
            let chunks: Vec<&[u8]> = text.as_bytes().chunks(1).collect();
            let limit = longest_line(text);
            let got = if text == SSE {
                run_limited(&mut SseDecoder::new(limit), &chunks, limit)
            } else {
                run_limited(&mut NdjsonDecoder, &chunks, limit)
            };
            assert_eq!(got.unwrap(), expect);
        }
    }

    /// Bytes that look a little like SSE and NDJSON: arbitrary bytes, line endings, field
    /// names, JSON, and runs long enough to pass a small limit.
    fn noise() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            any::<u8>().prop_map(|b| vec![b]),
            Just(b"\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"data: ".to_vec()),
            Just(b"data: [DONE]".to_vec()),
            Just(b": keep-alive".to_vec()),
            Just(br#"{"choices":[{"delta":{"content":"hi"}}]}"#.to_vec()),
            Just(br#"{"message":{"content":"hi"},"done":false}"#.to_vec()),
            Just(br#"{"done":true}"#.to_vec()),
            Just(b"event: ".to_vec()),
            Just(
                br#"{"type":"content_block_delta","delta":{"type":"text_delta","text":"hi"}}"#
                    .to_vec()
            ),
            Just(br#"{"type":"message_stop"}"#.to_vec()),
            Just(br#"{"type":"error","error":{"message":"x"}}"#.to_vec()),
            (1usize..100).prop_map(|n| vec![b'x'; n]),
        ];
        proptest::collection::vec(piece, 0..48).prop_map(|v| v.concat())
    }

    fn noise_and_splits() -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
        noise().prop_flat_map(|bytes| {
            let len = bytes.len();
            (Just(bytes), splits(len))
        })
    }

    /// Feeds arbitrary chunks as [`decode`] would, until the first error, checking after every
    /// chunk that the buffer holds at most the limit (plus a `\r` that may still end the line)
    /// and held at most that plus the chunk, that the decoder's pending data (`data_len`) is
    /// within the limit, and that the work stays linear in the input.
    fn feed_noise<D: Decoder>(
        decoder: &mut D,
        chunks: &[Vec<u8>],
        limit: usize,
        data_len: impl Fn(&D) -> usize,
    ) -> Result<(), TestCaseError> {
        let mut lines = LineBuffer::new(limit);
        let mut out = VecDeque::new();
        let mut total = 0;
        let mut ended = false;
        for chunk in chunks {
            lines.stats.peak = 0;
            total += chunk.len();
            let fed = feed(&mut lines, decoder, chunk, &mut out);
            prop_assert!(lines.stats.peak <= limit + 1 + chunk.len());
            prop_assert!(lines.stats.examined <= total && lines.stats.moved <= total);
            match fed {
                Ok(()) => {
                    prop_assert!(lines.buf.len() <= limit + 1, "{} held", lines.buf.len());
                    prop_assert_eq!(lines.start, 0);
                }
                Err(_) => {
                    ended = true;
                    break;
                }
            }
            prop_assert!(data_len(decoder) <= limit);
        }
        if !ended {
            let rest = String::from_utf8_lossy(lines.pending()).into_owned();
            let _ = decoder.finish(&rest, &mut out);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_split_of_sse_parses_the_same(cuts in splits(SSE.len())) {
            let chunks = chunked(SSE.as_bytes(), &cuts);
            let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            prop_assert_eq!(run(&mut SseDecoder::default(), &refs).unwrap(), expected("gpt-4o-2024", "length"));
            // A limit as long as the longest line is enough; one byte less fails, however split.
            let limit = longest_line(SSE);
            prop_assert_eq!(
                run_limited(&mut SseDecoder::new(limit), &refs, limit).unwrap(),
                expected("gpt-4o-2024", "length")
            );
            prop_assert_eq!(
                run_limited(&mut SseDecoder::new(limit - 1), &refs, limit - 1).unwrap_err(),
                ProviderError::TooLarge { what: TOO_LARGE_LINE, limit: limit - 1 }
            );
        }

        #[test]
        fn any_split_of_an_anthropic_stream_parses_the_same(cuts in splits(ANTHROPIC.len())) {
            let chunks = chunked(ANTHROPIC.as_bytes(), &cuts);
            let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            let whole = run(&mut MessagesDecoder::new(1 << 20), &[ANTHROPIC.as_bytes()]).unwrap();
            let limit = longest_line(ANTHROPIC);
            prop_assert_eq!(
                run_limited(&mut MessagesDecoder::new(limit), &refs, limit).unwrap(),
                whole
            );
            prop_assert_eq!(
                run_limited(&mut MessagesDecoder::new(limit - 1), &refs, limit - 1).unwrap_err(),
                ProviderError::TooLarge { what: TOO_LARGE_LINE, limit: limit - 1 }
            );
        }

        #[test]
        fn any_split_of_ndjson_parses_the_same(cuts in splits(NDJSON.len())) {
            let chunks = chunked(NDJSON.as_bytes(), &cuts);
            let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            prop_assert_eq!(run(&mut NdjsonDecoder, &refs).unwrap(), expected("llama3:8b", "stop"));
            let limit = longest_line(NDJSON);
            prop_assert_eq!(
                run_limited(&mut NdjsonDecoder, &refs, limit).unwrap(),
                expected("llama3:8b", "stop")
            );
            prop_assert_eq!(
                run_limited(&mut NdjsonDecoder, &refs, limit - 1).unwrap_err(),
                ProviderError::TooLarge { what: TOO_LARGE_LINE, limit: limit - 1 }
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Arbitrary bytes, split anywhere: no panic, bounded buffers, linear work.
        #[test]
        fn sse_noise_is_bounded((bytes, cuts) in noise_and_splits(), limit in 8usize..128) {
            let chunks = chunked(&bytes, &cuts);
            feed_noise(&mut SseDecoder::new(limit), &chunks, limit, |d| d.held())?;
        }

        #[test]
        fn anthropic_noise_is_bounded((bytes, cuts) in noise_and_splits(), limit in 8usize..128) {
            let chunks = chunked(&bytes, &cuts);
            feed_noise(&mut MessagesDecoder::new(limit), &chunks, limit, |d| d.held())?;
        }

        #[test]
        fn ndjson_noise_is_bounded((bytes, cuts) in noise_and_splits(), limit in 8usize..128) {
            let chunks = chunked(&bytes, &cuts);
            feed_noise(&mut NdjsonDecoder, &chunks, limit, |_| 0)?;
        }
    }
}
