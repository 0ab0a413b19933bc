//! Request validation: every field checked before any work, an error naming the field.

use crate::domain::{Phase, SectionType, has_forbidden_id_char};
use crate::error::GatewayError;
use crate::gateway::GenerateInput;
use crate::pb;

/// Longest accepted `report_id` / `section_id`, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Most `options.stop` sequences accepted.
pub const MAX_STOP_SEQUENCES: usize = 16;

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

/// Validates a generation request into the gateway's input. Errors name the field.
pub fn validate(
    req: pb::GenerateRequest,
    max_prompt_bytes: usize,
) -> Result<GenerateInput, GatewayError> {
    report_id(&req.report_id)?;
    id("section_id", &req.section_id, false)?;
    let phase = phase_from(req.phase)?;
    let section_type = section_type_from(req.section_type)?;
    if req.prompt.trim().is_empty() {
        return Err(GatewayError::invalid("prompt", "must not be empty"));
    }
    for (field, text) in [
        ("prompt", &req.prompt),
        ("system_prompt", &req.system_prompt),
    ] {
        if text.len() > max_prompt_bytes {
            return Err(GatewayError::invalid(
                field,
                format!(
                    "{} bytes exceeds VRA_MAX_PROMPT_BYTES ({max_prompt_bytes})",
                    text.len()
                ),
            ));
        }
    }
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
    Ok(GenerateInput {
        report_id: req.report_id,
        section_id: req.section_id,
        section_type,
        phase,
        prompt: req.prompt,
        system_prompt: Some(req.system_prompt).filter(|s| !s.is_empty()),
        temperature: options.temperature,
        top_p: None,
        max_tokens: options.max_tokens,
        stop: options.stop,
        seed: None,
        pin: None,
        client: None,
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
        }
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
        assert_eq!(input.system_prompt, None);
    }

    const FIELDS: [&str; 9] = [
        "report_id",
        "section_id",
        "phase",
        "section_type",
        "prompt",
        "system_prompt",
        "options.temperature",
        "options.max_tokens",
        "options.stop",
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
                options: Some(pb::GenerationOptions { temperature, max_tokens, stop }),
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
