//! Server-Sent Events framing, shared by the wire formats that stream SSE (OpenAI's
//! `data:`-only chunks, Anthropic's named events).
//!
//! [`super::stream::LineBuffer`] hands over whole lines; [`SseEvents`] turns them into events
//! as the SSE specification does: `data:` lines accumulate (joined by `\n`), `event:` names
//! the event, a blank line dispatches it, `:` lines are comments (keep-alives), other fields
//! are ignored. What one event accumulates is capped (the stream line limit), so many short
//! `data:` lines cannot add up to an unbounded event.

use super::ProviderError;
use super::stream::TOO_LARGE_EVENT;

/// One dispatched event: its `event:` name (empty when none was given) and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub name: String,
    pub data: String,
}

/// Accumulates the fields of the event in progress.
#[derive(Debug)]
pub struct SseEvents {
    name: String,
    data: String,
    has_data: bool,
    /// Most bytes of `data` one event may accumulate.
    max_data: usize,
}

impl SseEvents {
    pub fn new(max_data: usize) -> Self {
        Self {
            name: String::new(),
            data: String::new(),
            has_data: false,
            max_data,
        }
    }

    /// Bytes of data held for the event in progress.
    pub fn held(&self) -> usize {
        self.data.len()
    }

    /// The data of the event in progress (e.g. OpenAI's `[DONE]`, sometimes sent without the
    /// blank line after it).
    pub fn pending_data(&self) -> Option<&str> {
        self.has_data.then_some(self.data.as_str())
    }

    /// Takes one line; returns the event a blank line completes. An event without data is
    /// dropped, as the specification says.
    pub fn line(&mut self, line: &str) -> Result<Option<SseEvent>, ProviderError> {
        if line.is_empty() {
            return Ok(self.dispatch());
        }
        if line.starts_with(':') {
            return Ok(None);
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                let joined = self.data.len() + usize::from(self.has_data) + value.len();
                if joined > self.max_data {
                    return Err(ProviderError::TooLarge {
                        what: TOO_LARGE_EVENT,
                        limit: self.max_data,
                    });
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" if value.len() <= self.max_data => {
                self.name.clear();
                self.name.push_str(value);
            }
            _ => {}
        }
        Ok(None)
    }

    /// The event in progress, if it has data (the end of the stream dispatches it).
    pub fn dispatch(&mut self) -> Option<SseEvent> {
        let name = std::mem::take(&mut self.name);
        if !self.has_data {
            return None;
        }
        self.has_data = false;
        Some(SseEvent {
            name,
            data: std::mem::take(&mut self.data),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(events: &mut SseEvents, text: &str) -> Vec<SseEvent> {
        let mut out = Vec::new();
        for line in text.split('\n') {
            if let Some(e) = events.line(line.trim_end_matches('\r')).unwrap() {
                out.push(e);
            }
        }
        out
    }

    #[test]
    fn named_events_multi_line_data_comments_and_unknown_fields() {
        let mut events = SseEvents::new(1024);
        let got = feed(
            &mut events,
            ": keep-alive\nevent: ping\ndata: {}\n\nid: 7\ndata: a\ndata:b\n\nevent: lonely\n\n",
        );
        assert_eq!(
            got,
            vec![
                SseEvent {
                    name: "ping".into(),
                    data: "{}".into()
                },
                SseEvent {
                    name: String::new(),
                    data: "a\nb".into()
                },
            ]
        );
        assert_eq!(events.dispatch(), None, "an event without data is dropped");
    }

    #[test]
    fn one_event_accumulates_at_most_the_limit() {
        let mut events = SseEvents::new(8);
        events.line("data: 1234").unwrap();
        events.line("data: 567").unwrap();
        assert_eq!(events.held(), 8);
        assert!(matches!(
            events.line("data: x"),
            Err(ProviderError::TooLarge {
                what: TOO_LARGE_EVENT,
                limit: 8
            })
        ));
    }
}
