//! Request validation: every field checked before any work, an error naming the field.

use std::sync::Arc;
use std::time::Duration;

use crate::domain::{
    CacheMode, CacheOptions, ChatMessage, Phase, Role, SectionType, has_forbidden_id_char,
};
use crate::error::GatewayError;
use crate::gateway::GenerateInput;
use crate::pb;

/// Longest accepted `report_id` / `section_id`, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Most `options.stop` sequences accepted.
pub const MAX_STOP_SEQUENCES: usize = 16;
/// Most turns accepted in `messages`.
pub const MAX_MESSAGES: usize = 1024;

pub(super) fn phase_from(value: i32) -> Result<Phase, GatewayError> {
    match pb::CompilationPhase::try_from(value) {
        Ok(pb::CompilationPhase::Draft) => Ok(Phase::Draft),
        Ok(pb::CompilationPhase::Expand) => Ok(Phase::Expand),
        Ok(pb::CompilationPhase::Refine) => Ok(Phase::Refine),
        Ok(pb::CompilationPhase::Abstract) => Ok(Phase::Abstract),
        Ok(pb::CompilationPhase::Unspecified) => Err(GatewayError::invalid(
            "phase",
            "must be set (COMPILATION_PHASE_DRAFT, _EXPAND, _REFINE or _ABSTRACT)",
        )),
        Err(_) => Err(GatewayError::invalid(
            "phase",
            format!("unknown value {value}"),
        )),
    }
}

pub(super) fn section_type_from(value: i32) -> Result<SectionType, GatewayError> {
    use pb::SectionType as P;
    Ok(match P::try_from(value) {
        Ok(P::Unspecified) => SectionType::Unspecified,
        Ok(P::Introduction) => SectionType::Introduction,
        Ok(P::Conclusion) => SectionType::Conclusion,
        Ok(P::Analysis) => SectionType::Analysis,
        Ok(P::Methodology) => SectionType::Methodology,
        Ok(P::Implementation) => SectionType::Implementation,
        Ok(P::Other) => SectionType::Other,
        Err(_) => {
            return Err(GatewayError::invalid(
                "section_type",
                format!("unknown value {value}"),
            ));
        }
    })
}

/// Checks an id that ends up in ledger keys, log lines and spans. The value is never echoed:
/// the message names the field and the rule only.
fn id(field: &'static str, value: &str, required: bool) -> Result<(), GatewayError> {
    if required && value.is_empty() {
        return Err(GatewayError::invalid(field, "must not be empty"));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(GatewayError::invalid(
            field,
            format!("must be at most {MAX_ID_BYTES} bytes, got {}", value.len()),
        ));
    }
    if has_forbidden_id_char(value) {
        return Err(GatewayError::invalid(
            field,
            "must not contain control characters (C0/C1, including newline, carriage return and tab), line separators, bidi controls or `|`",
        ));
    }
    Ok(())
}

pub(super) fn report_id(value: &str) -> Result<(), GatewayError> {
    id("report_id", value, true)
}

/// The conversation a request sends: its `messages`, or its `system_prompt` (when set) and
/// `prompt` as a system and a user turn. It must hold a user turn with text; its content is
/// bounded by `max_prompt_bytes` (each of `prompt` and `system_prompt`, or all of `messages`
/// together). Message errors name `messages` and give the turn's index in the reason.
fn conversation(
    messages: Vec<pb::ChatMessage>,
    system_prompt: String,
    prompt: String,
    max_prompt_bytes: usize,
) -> Result<Arc<[ChatMessage]>, GatewayError> {
    let too_long = |field: &'static str, len: usize| {
        GatewayError::invalid(
            field,
            format!("{len} bytes exceeds VRA_MAX_PROMPT_BYTES ({max_prompt_bytes})"),
        )
    };
    if messages.is_empty() {
        if prompt.trim().is_empty() {
            return Err(GatewayError::invalid(
                "prompt",
                "must not be empty (or set `messages`)",
            ));
        }
        for (field, text) in [("prompt", &prompt), ("system_prompt", &system_prompt)] {
            if text.len() > max_prompt_bytes {
                return Err(too_long(field, text.len()));
            }
        }
        let system = Some(system_prompt)
            .filter(|s| !s.is_empty())
            .map(|s| ChatMessage::new(Role::System, s));
        return Ok(system
            .into_iter()
            .chain([ChatMessage::new(Role::User, prompt)])
            .collect());
    }
    if !prompt.is_empty() || !system_prompt.is_empty() {
        let field = if prompt.is_empty() {
            "system_prompt"
        } else {
            "prompt"
        };
        return Err(GatewayError::invalid(
            field,
            "must be empty when `messages` is set (put it in `messages`)",
        ));
    }
    if messages.len() > MAX_MESSAGES {
        return Err(GatewayError::invalid(
            "messages",
            format!("at most {MAX_MESSAGES} turns, got {}", messages.len()),
        ));
    }
    let total: usize = messages.iter().map(|m| m.content.len()).sum();
    if total > max_prompt_bytes {
        return Err(too_long("messages", total));
    }
    let mut has_user = false;
    let turns = messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match pb::ChatRole::try_from(m.role) {
                Ok(pb::ChatRole::System) => Role::System,
                Ok(pb::ChatRole::User) => Role::User,
                Ok(pb::ChatRole::Assistant) => Role::Assistant,
                Ok(pb::ChatRole::Unspecified) | Err(_) => {
                    return Err(GatewayError::invalid(
                        "messages",
                        format!("messages[{i}].role must be CHAT_ROLE_SYSTEM, _USER or _ASSISTANT"),
                    ));
                }
            };
            has_user |= role == Role::User && !m.content.trim().is_empty();
            Ok(ChatMessage::new(role, m.content))
        })
        .collect::<Result<Arc<[ChatMessage]>, _>>()?;
    if !has_user {
        return Err(GatewayError::invalid(
            "messages",
            "needs a user turn with text",
        ));
    }
    Ok(turns)
}

/// Validates a generation request into the gateway's input. Errors name the field.
pub fn validate(
    req: pb::GenerateRequest,
    max_prompt_bytes: usize,
) -> Result<GenerateInput, GatewayError> {
    report_id(&req.report_id)?;
    id("section_id", &req.section_id, false)?;
    let phase = phase_from(req.phase)?;
    let section_type = section_type_from(req.section_type)?;
    let messages = conversation(
        req.messages,
        req.system_prompt,
        req.prompt,
        max_prompt_bytes,
    )?;
    let options = req.options.unwrap_or_default();
    if let Some(t) = options.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(GatewayError::invalid(
            "options.temperature",
            "must be between 0 and 2",
        ));
    }
    if options.max_tokens == Some(0) {
        return Err(GatewayError::invalid(
            "options.max_tokens",
            "must be greater than 0 when set",
        ));
    }
    if options.stop.len() > MAX_STOP_SEQUENCES {
        return Err(GatewayError::invalid(
            "options.stop",
            format!(
                "at most {MAX_STOP_SEQUENCES} sequences, got {}",
                options.stop.len()
            ),
        ));
    }
    if options
        .stop
        .iter()
        .any(|s| s.is_empty() || s.len() > MAX_ID_BYTES)
    {
        return Err(GatewayError::invalid(
            "options.stop",
            format!("sequences must be 1 to {MAX_ID_BYTES} bytes"),
        ));
    }
    if let Some(p) = options.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return Err(GatewayError::invalid(
            "options.top_p",
            "must be greater than 0 and at most 1",
        ));
    }
    let mode = match pb::CacheMode::try_from(options.cache) {
        Ok(pb::CacheMode::Unspecified) => CacheMode::Default,
        Ok(pb::CacheMode::NoCache) => CacheMode::NoCache,
        Ok(pb::CacheMode::NoStore) => CacheMode::NoStore,
        Ok(pb::CacheMode::OnlyIfCached) => CacheMode::OnlyIfCached,
        Err(_) => {
            return Err(GatewayError::invalid(
                "options.cache",
                "unknown cache mode; accepted: CACHE_MODE_UNSPECIFIED (default), NO_CACHE, NO_STORE, ONLY_IF_CACHED",
            ));
        }
    };
    let cache = CacheOptions {
        mode,
        max_age: options
            .max_age_secs
            .map(|secs| Duration::from_secs(u64::from(secs))),
    };
    Ok(GenerateInput {
        report_id: req.report_id,
        section_id: req.section_id,
        section_type,
        phase,
        messages,
        temperature: options.temperature,
        top_p: options.top_p,
        max_tokens: options.max_tokens,
        stop: options.stop,
        seed: options.seed,
        pin: None,
        client: None,
        cache,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> pb::GenerateRequest {
        pb::GenerateRequest {
            report_id: "r-1".into(),
            section_id: "1.3".into(),
            section_type: pb::SectionType::Analysis as i32,
            phase: pb::CompilationPhase::Refine as i32,
            prompt: "Write it.".into(),
            system_prompt: String::new(),
            options: None,
            messages: Vec::new(),
        }
    }

    fn turn(role: pb::ChatRole, content: &str) -> pb::ChatMessage {
        pb::ChatMessage {
            role: role as i32,
            content: content.into(),
        }
    }

    fn conversation(messages: Vec<pb::ChatMessage>) -> pb::GenerateRequest {
        pb::GenerateRequest {
            prompt: String::new(),
            messages,
            ..request()
        }
    }

    #[test]
    fn prompt_and_system_prompt_are_a_system_and_a_user_turn() {
        let input = validate(
            pb::GenerateRequest {
                system_prompt: "be brief".into(),
                ..request()
            },
            100,
        )
        .unwrap();
        assert_eq!(
            &input.messages[..],
            [
                ChatMessage::new(Role::System, "be brief"),
                ChatMessage::new(Role::User, "Write it.")
            ]
        );
        let input = validate(request(), 100).unwrap();
        assert_eq!(
            &input.messages[..],
            [ChatMessage::new(Role::User, "Write it.")]
        );
    }

    #[test]
    fn messages_are_the_whole_conversation_in_order() {
        use pb::ChatRole::{Assistant, System, User};
        let input = validate(
            conversation(vec![
                turn(System, "be brief"),
                turn(User, "Draft it."),
                turn(Assistant, "A draft."),
                turn(User, "Shorter."),
            ]),
            100,
        )
        .unwrap();
        let roles: Vec<_> = input.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [Role::System, Role::User, Role::Assistant, Role::User]
        );
        assert_eq!(input.messages[3].content, "Shorter.");
    }

    #[test]
    fn a_bad_conversation_is_refused_naming_the_field() {
        use pb::ChatRole::{Assistant, System, User};
        let reason = |req| match validate(req, 20) {
            Err(GatewayError::InvalidArgument { field, reason }) => (field, reason),
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        };
        // No user turn with text.
        assert_eq!(
            reason(conversation(vec![turn(System, "s"), turn(Assistant, "a")])).0,
            "messages"
        );
        assert_eq!(reason(conversation(vec![turn(User, "  ")])).0, "messages");
        // A role that is not one.
        let (field, why) = reason(conversation(vec![
            turn(User, "a"),
            pb::ChatMessage {
                role: 9,
                content: "b".into(),
            },
        ]));
        assert_eq!(field, "messages");
        assert!(why.contains("messages[1].role"), "{why}");
        // The limit holds for the conversation as a whole.
        let (field, why) = reason(conversation(vec![
            turn(User, &"x".repeat(15)),
            turn(User, &"x".repeat(6)),
        ]));
        assert_eq!(field, "messages");
        assert!(why.contains("21 bytes"), "{why}");
        assert!(validate(conversation(vec![turn(User, &"x".repeat(20))]), 20).is_ok());
        // Both ways at once is ambiguous.
        assert_eq!(
            reason(pb::GenerateRequest {
                messages: vec![turn(User, "a")],
                ..request()
            })
            .0,
            "prompt"
        );
        let many = vec![turn(User, "a"); MAX_MESSAGES + 1];
        assert_eq!(
            match validate(conversation(many), usize::MAX) {
                Err(GatewayError::InvalidArgument { field, .. }) => field,
                other => panic!("{other:?}"),
            },
            "messages"
        );
    }

    fn field_of(req: pb::GenerateRequest) -> &'static str {
        match validate(req, 100) {
            Err(GatewayError::InvalidArgument { field, .. }) => field,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn every_invalid_field_is_named() {
        assert_eq!(
            field_of(pb::GenerateRequest {
                report_id: String::new(),
                ..request()
            }),
            "report_id"
        );
        assert_eq!(
            field_of(pb::GenerateRequest {
                report_id: "x".repeat(257),
                ..request()
            }),
            "report_id"
        );
        assert_eq!(
            field_of(pb::GenerateRequest {
                section_id: "x".repeat(257),
                ..request()
            }),
            "section_id"
        );
        assert_eq!(
            field_of(pb::GenerateRequest {
                phase: 0,
                ..request()
            }),
            "phase"
        );
        assert_eq!(
            field_of(pb::GenerateRequest {
                phase: 42,
                ..request()
            }),
            "phase"
        );
        assert_eq!(
            field_of(pb::GenerateRequest {
                section_type: 42,
                ..request()
            }),
            "section_type"
        );
        assert_eq!(
            field_of(pb::GenerateRequest {
                prompt: String::new(),
                ..request()
            }),
            "prompt"
        );
        assert_eq!(
            field_of(pb::GenerateRequest {
                prompt: "x".repeat(101),
                ..request()
            }),
            "prompt"
        );
        assert_eq!(
            field_of(pb::GenerateRequest {
                system_prompt: "x".repeat(101),
                ..request()
            }),
            "system_prompt"
        );
        let opts = |o: pb::GenerationOptions| pb::GenerateRequest {
            options: Some(o),
            ..request()
        };
        assert_eq!(
            field_of(opts(pb::GenerationOptions {
                temperature: Some(3.0),
                ..Default::default()
            })),
            "options.temperature"
        );
        assert_eq!(
            field_of(opts(pb::GenerationOptions {
                temperature: Some(f32::NAN),
                ..Default::default()
            })),
            "options.temperature"
        );
        assert_eq!(
            field_of(opts(pb::GenerationOptions {
                max_tokens: Some(0),
                ..Default::default()
            })),
            "options.max_tokens"
        );
        assert_eq!(
            field_of(opts(pb::GenerationOptions {
                stop: vec![String::new()],
                ..Default::default()
            })),
            "options.stop"
        );
        for top_p in [0.0, 1.5, f32::NAN] {
            assert_eq!(
                field_of(opts(pb::GenerationOptions {
                    top_p: Some(top_p),
                    ..Default::default()
                })),
                "options.top_p"
            );
        }
    }

    #[test]
    fn boundaries_are_inclusive() {
        let ok = validate(
            pb::GenerateRequest {
                report_id: "x".repeat(256),
                prompt: "x".repeat(100),
                ..request()
            },
            100,
        );
        assert!(ok.is_ok());
        let input = validate(request(), 100).unwrap();
        assert_eq!(
            (input.phase, input.section_type),
            (Phase::Refine, SectionType::Analysis)
        );
    }

    const FIELDS: [&str; 10] = [
        "report_id",
        "section_id",
        "phase",
        "section_type",
        "prompt",
        "system_prompt",
        "options.temperature",
        "options.max_tokens",
        "options.stop",
        "options.cache",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Arbitrary requests: validation never panics; an error names a known field and never
        /// echoes the ids; an accepted request has ids that cannot split a log line.
        #[test]
        fn validation_is_total_and_never_echoes(
            report_id in "(?s).{0,40}",
            section_id in "(?s).{0,40}",
            prompt in "(?s).{0,60}",
            phase in -2i32..7,
            section_type in -2i32..9,
            temperature in proptest::option::of(proptest::num::f32::ANY),
            max_tokens in proptest::option::of(proptest::num::u32::ANY),
            stop in proptest::collection::vec("(?s).{0,8}", 0..20),
        ) {
            let req = pb::GenerateRequest {
                report_id: report_id.clone(),
                section_id: section_id.clone(),
                section_type,
                phase,
                prompt,
                system_prompt: String::new(),
                options: Some(pb::GenerationOptions { temperature, max_tokens, stop, ..Default::default() }),
                messages: Vec::new(),
            };
            match validate(req, 50) {
                Ok(input) => {
                    proptest::prop_assert!(!has_forbidden_id_char(&input.report_id));
                    proptest::prop_assert!(!has_forbidden_id_char(&input.section_id));
                    proptest::prop_assert!(!input.report_id.is_empty());
                }
                Err(GatewayError::InvalidArgument { field, reason }) => {
                    proptest::prop_assert!(FIELDS.contains(&field), "{}", field);
                    for id in [&report_id, &section_id] {
                        if id.chars().count() > 3 {
                            proptest::prop_assert!(!reason.contains(id.as_str()), "{}", reason);
                        }
                    }
                }
                Err(other) => proptest::prop_assert!(false, "unexpected {:?}", other),
            }
        }

    }
}
