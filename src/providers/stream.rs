//! Incremental decoding of streamed completions: OpenAI Server-Sent Events and Ollama NDJSON.
//!
//! Network chunks split anywhere — inside a line, inside a UTF-8 character, inside `[DONE]`.
//! [`LineBuffer`] only releases complete lines, so everything above it sees whole lines and
//! whole characters. Each wire format is a small [`Decoder`] that turns lines into
//! [`StreamEvent`]s; [`decode`] drives one over an HTTP body with an idle timeout and makes a
//! stream that ends without its terminal event an error ([`ProviderError::Truncated`]).
//!
//! Why not an SSE crate: OpenAI's use of SSE is one `data:` line per event; the line buffer is
//! the part that needs care and it is shared with NDJSON, so one small tested module serves
//! both formats.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::{EventStream, ProviderError, StreamEvent, TokenUsage};

/// Accumulates bytes and yields complete lines (without `\n` or `\r\n`).
#[derive(Debug, Default)]
pub struct LineBuffer {
    buf: Vec<u8>,
    start: usize,
}

impl LineBuffer {
    pub fn push(&mut self, chunk: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete line, if one is buffered.
    pub fn next_line(&mut self) -> Option<Result<&str, ProviderError>> {
        let rest = &self.buf[self.start..];
        let nl = rest.iter().position(|&b| b == b'\n')?;
        let line_start = self.start;
        self.start += nl + 1;
        let mut line = &self.buf[line_start..line_start + nl];
        if let [head @ .., b'\r'] = line {
            line = head;
        }
        Some(
            std::str::from_utf8(line)
                .map_err(|_| ProviderError::Malformed("invalid UTF-8 in stream".into())),
        )
    }

    /// Drops consumed bytes so the buffer does not grow with the stream.
    fn compact(&mut self) {
        if self.start > 4096 {
            self.buf.drain(..self.start);
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
    Ok(())
}

/// Drives `decoder` over `body`: yields deltas, then the terminal `Done`, and then ends. A
/// silent upstream is cut after `idle`; a body that ends before `Done` yields `Truncated`.
pub fn decode<S, D>(body: S, decoder: D, idle: Duration) -> EventStream
where
    S: Stream<Item = Result<Bytes, reqwest::Error>> + Send + 'static,
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
        lines: LineBuffer::default(),
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
                    Some(Err(e)) => Err(super::http::map_reqwest(e)),
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

/// OpenAI Chat Completions streaming: SSE `data:` lines of `chat.completion.chunk` objects,
/// ended by `data: [DONE]`. Usage arrives in a last chunk with empty `choices` when the
/// request set `stream_options.include_usage`.
#[derive(Debug, Default)]
pub struct SseDecoder {
    data: String,
    has_data: bool,
    model: String,
    usage: TokenUsage,
    finish_reason: Option<String>,
}

impl SseDecoder {
    fn dispatch(&mut self, out: &mut VecDeque<StreamEvent>) -> Result<(), ProviderError> {
        if !self.has_data {
            return Ok(());
        }
        self.has_data = false;
        let data = std::mem::take(&mut self.data);
        if data.trim() == "[DONE]" {
            out.push_back(StreamEvent::Done {
                model: std::mem::take(&mut self.model),
                usage: self.usage,
                finish_reason: self.finish_reason.take().unwrap_or_else(|| "stop".into()),
            });
            return Ok(());
        }
        let chunk: super::openai::wire::Chunk = serde_json::from_str(&data)
            .map_err(|e| ProviderError::Malformed(format!("stream chunk: {e}")))?;
        if let Some(err) = chunk.error {
            return Err(ProviderError::Upstream(err.message.unwrap_or_default()));
        }
        if let Some(model) = chunk.model {
            self.model = model;
        }
        if let Some(u) = chunk.usage {
            self.usage = TokenUsage {
                input: u.prompt_tokens,
                output: u.completion_tokens,
            };
        }
        for choice in chunk.choices {
            if let Some(text) = choice
                .delta
                .and_then(|d| d.content)
                .filter(|t| !t.is_empty())
            {
                out.push_back(StreamEvent::Delta(text));
            }
            if let Some(reason) = choice.finish_reason {
                self.finish_reason = Some(reason);
            }
        }
        Ok(())
    }
}

impl Decoder for SseDecoder {
    fn line(&mut self, line: &str, out: &mut VecDeque<StreamEvent>) -> Result<(), ProviderError> {
        if line.is_empty() {
            return self.dispatch(out);
        }
        if line.starts_with(':') {
            return Ok(()); // comment / keep-alive
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        if field == "data" {
            if self.has_data {
                self.data.push('\n');
            }
            self.data.push_str(value);
            self.has_data = true;
            // OpenAI ends with `data: [DONE]`, sometimes without the blank line after it.
            if self.data == "[DONE]" {
                return self.dispatch(out);
            }
        }
        Ok(())
    }

    fn finish(&mut self, rest: &str, out: &mut VecDeque<StreamEvent>) -> Result<(), ProviderError> {
        if !rest.is_empty() {
            self.line(rest, out)?;
        }
        self.dispatch(out)
    }
}

/// Ollama `/api/chat` streaming: one JSON object per line; the last has `"done": true`.
#[derive(Debug, Default)]
pub struct NdjsonDecoder;

impl Decoder for NdjsonDecoder {
    fn line(&mut self, line: &str, out: &mut VecDeque<StreamEvent>) -> Result<(), ProviderError> {
        if line.trim().is_empty() {
            return Ok(());
        }
        let msg: super::ollama::wire::ChatResponse = serde_json::from_str(line)
            .map_err(|e| ProviderError::Malformed(format!("stream line: {e}")))?;
        if let Some(err) = msg.error {
            return Err(ProviderError::Upstream(err));
        }
        if let Some(text) = msg.message.map(|m| m.content).filter(|t| !t.is_empty()) {
            out.push_back(StreamEvent::Delta(text));
        }
        if msg.done {
            out.push_back(StreamEvent::Done {
                model: msg.model.unwrap_or_default(),
                usage: TokenUsage {
                    input: msg.prompt_eval_count,
                    output: msg.eval_count,
                },
                finish_reason: msg.done_reason.unwrap_or_else(|| "stop".into()),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(
        decoder: &mut impl Decoder,
        chunks: &[&[u8]],
    ) -> Result<Vec<StreamEvent>, ProviderError> {
        let mut lines = LineBuffer::default();
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
                usage: TokenUsage {
                    input: 7,
                    output: 3,
                },
                finish_reason: finish.into(),
            },
        ]
    }

    #[test]
    fn sse_whole() {
        let got = run(&mut SseDecoder::default(), &[SSE.as_bytes()]).unwrap();
        assert_eq!(got, expected("gpt-4o-2024", "length"));
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

    fn splits(len: usize) -> impl Strategy<Value = Vec<usize>> {
        proptest::collection::vec(0..=len, 0..12).prop_map(|mut v| {
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

    proptest! {
        #[test]
        fn any_split_of_sse_parses_the_same(cuts in splits(SSE.len())) {
            let chunks = chunked(SSE.as_bytes(), &cuts);
            let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            prop_assert_eq!(run(&mut SseDecoder::default(), &refs).unwrap(), expected("gpt-4o-2024", "length"));
        }

        #[test]
        fn any_split_of_ndjson_parses_the_same(cuts in splits(NDJSON.len())) {
            let chunks = chunked(NDJSON.as_bytes(), &cuts);
            let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            prop_assert_eq!(run(&mut NdjsonDecoder, &refs).unwrap(), expected("llama3:8b", "stop"));
        }
    }
}
