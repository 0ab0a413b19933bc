//! Money and tokens: model prices, what a call's tokens cost, the worst case a call may cost
//! (for the dollar cap), and token estimates for answers that arrive without usage.
//!
//! Amounts are integer nano-dollars ([`Nanos`], 10⁻⁹ USD), so the ledgers add them exactly and
//! atomically (Redis `HINCRBY`); a cost is rounded *up* to the next nano-dollar, so rounding
//! never lets a report slip past its cap. Dollars as `f64` exist only at the edges (the
//! configuration, responses, metrics).
//!
//! Prices are USD per million tokens, input and output, as providers publish them. A model's
//! price comes from `[pricing."MODEL"]` in the TOML configuration, else — for cloud-tier
//! providers only — from [`BUILTIN_PRICES`]; a local-tier model without an entry costs 0. A
//! cloud model without any price is *unpriced*: its calls' cost is unknown, never 0.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::domain::{Nanos, TokenUsage};

/// A model's price: USD per million input and output tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

/// The highest price per million tokens a configuration may set: far above any real model,
/// low enough that no realistic token count overflows a nano-dollar `u64`.
pub const MAX_PRICE_PER_MTOK: f64 = 100_000.0;

impl Price {
    pub const FREE: Price = Price {
        input_per_mtok: 0.0,
        output_per_mtok: 0.0,
    };

    /// Checks a configured price: finite, not negative, at most [`MAX_PRICE_PER_MTOK`].
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("input_per_mtok", self.input_per_mtok),
            ("output_per_mtok", self.output_per_mtok),
        ] {
            if !v.is_finite() || !(0.0..=MAX_PRICE_PER_MTOK).contains(&v) {
                return Err(format!(
                    "{name} must be a number of USD per million tokens from 0 to {MAX_PRICE_PER_MTOK}"
                ));
            }
        }
        Ok(())
    }

    /// What `input` and `output` tokens cost, rounded up to the next nano-dollar. Computed in
    /// integers: a price of USD per million tokens is that many pico-dollars per token (exact
    /// for prices with up to 6 decimals), so `3 × $1.10/M` is exactly 3,300 nano-dollars, not
    /// 3,301 as `3 × 1.1 × 1000` in floating point would round up to.
    pub fn cost_of(&self, input: u64, output: u64) -> Nanos {
        let pico = |per_mtok: f64| (per_mtok * 1e6).round() as u128;
        let total = u128::from(input) * pico(self.input_per_mtok)
            + u128::from(output) * pico(self.output_per_mtok);
        Nanos(u64::try_from(total.div_ceil(1000)).unwrap_or(u64::MAX))
    }

    /// What a call's usage costs.
    pub fn cost(&self, usage: TokenUsage) -> Nanos {
        self.cost_of(u64::from(usage.input), u64::from(usage.output))
    }
}

/// List prices of common cloud models, USD per million tokens (input, output): OpenAI's
/// published standard-tier prices (openai.com/api/pricing), as of 2025-08, and Anthropic's
/// (Claude; below, with their own date and source). They are defaults
/// only — `[pricing."MODEL"]` overrides any of them — and apply to cloud-tier providers only.
/// (The reasoning models, o-series, are left out: they take `max_completion_tokens`, not the
/// `max_tokens` the gateway sends.)
pub const BUILTIN_PRICES: &[(&str, Price)] = &[
    ("gpt-4o", price(2.50, 10.00)),
    ("gpt-4o-mini", price(0.15, 0.60)),
    ("gpt-4.1", price(2.00, 8.00)),
    ("gpt-4.1-mini", price(0.40, 1.60)),
    ("gpt-4.1-nano", price(0.10, 0.40)),
    ("gpt-4-turbo", price(10.00, 30.00)),
    ("gpt-3.5-turbo", price(0.50, 1.50)),
    // Anthropic's list prices (docs.anthropic.com/en/docs/about-claude/pricing), as published
    // up to 2026-04 (Opus 4.7), by alias and by dated id; models released since (Opus 4.8, the
    // Claude 5 family) need a `[pricing."MODEL"]` entry. Base rates only: the prompt cache's
    // writes (1.25x) and reads (0.1x) are counted as input at the input rate, and the 4.5 and
    // older Sonnets' long-context rate (prompts over 200k tokens) is not modelled.
    ("claude-opus-4-7", price(5.00, 25.00)),
    ("claude-opus-4-6", price(5.00, 25.00)),
    ("claude-sonnet-4-6", price(3.00, 15.00)),
    ("claude-opus-4-5", price(5.00, 25.00)),
    ("claude-opus-4-5-20251101", price(5.00, 25.00)),
    ("claude-sonnet-4-5", price(3.00, 15.00)),
    ("claude-sonnet-4-5-20250929", price(3.00, 15.00)),
    ("claude-haiku-4-5", price(1.00, 5.00)),
    ("claude-haiku-4-5-20251001", price(1.00, 5.00)),
    ("claude-opus-4-1", price(15.00, 75.00)),
    ("claude-opus-4-1-20250805", price(15.00, 75.00)),
    ("claude-opus-4-0", price(15.00, 75.00)),
    ("claude-opus-4-20250514", price(15.00, 75.00)),
    ("claude-sonnet-4-0", price(3.00, 15.00)),
    ("claude-sonnet-4-20250514", price(3.00, 15.00)),
    ("claude-3-5-haiku-latest", price(0.80, 4.00)),
    ("claude-3-5-haiku-20241022", price(0.80, 4.00)),
    ("claude-3-haiku-20240307", price(0.25, 1.25)),
];

const fn price(input_per_mtok: f64, output_per_mtok: f64) -> Price {
    Price {
        input_per_mtok,
        output_per_mtok,
    }
}

/// The price table: the configuration's `[pricing]` entries over [`BUILTIN_PRICES`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pricing {
    /// `[pricing."MODEL"]` entries, by exact model name.
    pub configured: BTreeMap<String, Price>,
}

/// Where a model's price came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PriceSource {
    Configured(Price),
    Builtin(Price),
    /// A local-tier model without a `[pricing]` entry.
    LocalFree,
    /// A cloud model with no price anywhere: its cost is unknown.
    Unpriced,
}

impl PriceSource {
    pub fn price(self) -> Option<Price> {
        match self {
            PriceSource::Configured(p) | PriceSource::Builtin(p) => Some(p),
            PriceSource::LocalFree => Some(Price::FREE),
            PriceSource::Unpriced => None,
        }
    }
}

impl Pricing {
    /// The price of `model` served by a cloud-tier (`cloud`) or local-tier provider.
    pub fn lookup(&self, model: &str, cloud: bool) -> PriceSource {
        if let Some(p) = self.configured.get(model) {
            return PriceSource::Configured(*p);
        }
        if !cloud {
            return PriceSource::LocalFree;
        }
        BUILTIN_PRICES
            .iter()
            .find(|(name, _)| *name == model)
            .map_or(PriceSource::Unpriced, |(_, p)| PriceSource::Builtin(*p))
    }
}

/// Tokens a chat template adds around each message (role markers, separators): an upper
/// bound for the templates of common model families.
const TEMPLATE_TOKENS_PER_MESSAGE: u64 = 8;
/// Tokens a chat template adds once per request (the assistant turn's header).
const TEMPLATE_TOKENS_PER_REQUEST: u64 = 8;

/// An upper bound on the input tokens of a request with these message texts: a byte-level
/// tokenizer never makes more tokens than bytes, plus the template's tokens. Used to reserve a
/// call's worst case against the dollar cap; deliberately pessimistic (typical text is about
/// four bytes per token).
pub fn input_tokens_bound<'a>(messages: impl IntoIterator<Item = &'a str>) -> u64 {
    messages
        .into_iter()
        .map(|m| m.len() as u64 + TEMPLATE_TOKENS_PER_MESSAGE)
        .sum::<u64>()
        + TEMPLATE_TOKENS_PER_REQUEST
}

/// Bytes per token of typical English text with the common BPE tokenizers: the documented
/// heuristic for usage the upstream did not report.
pub const BYTES_PER_TOKEN: u64 = 4;

/// An estimate of the input tokens of these message texts: bytes / 4, rounded up, plus four
/// template tokens per message.
pub fn estimate_input_tokens<'a>(messages: impl IntoIterator<Item = &'a str>) -> u32 {
    let tokens: u64 = messages
        .into_iter()
        .map(|m| (m.len() as u64).div_ceil(BYTES_PER_TOKEN) + 4)
        .sum();
    u32::try_from(tokens).unwrap_or(u32::MAX)
}

/// An estimate of the output tokens of an answer of `bytes` bytes that arrived in `chunks`
/// streamed chunks (0 for a unary answer): servers that stream without usage send about one
/// token per chunk, so the larger of the chunk count and bytes / 4. A non-empty answer is
/// never 0 tokens.
pub fn estimate_output_tokens(bytes: usize, chunks: u32) -> u32 {
    let by_bytes = u32::try_from((bytes as u64).div_ceil(BYTES_PER_TOKEN)).unwrap_or(u32::MAX);
    let estimate = by_bytes.max(chunks);
    if bytes > 0 { estimate.max(1) } else { estimate }
}

/// The usage to account for a call: what the upstream reported, with each count the upstream
/// left at 0 estimated when there was text to count (`estimated` is then set). An estimated
/// output never exceeds `max_tokens` (the upstream stopped there), so an estimate never costs
/// more than the worst case the call held under a cost cap ([`input_tokens_bound`] bounds the
/// input estimate the same way).
pub fn complete_usage<'a>(
    reported: TokenUsage,
    messages: impl IntoIterator<Item = &'a str>,
    answer_bytes: usize,
    chunks: u32,
    max_tokens: Option<u32>,
) -> TokenUsage {
    let mut usage = reported;
    if usage.input == 0 {
        let estimate = estimate_input_tokens(messages);
        if estimate > 0 {
            usage.input = estimate;
            usage.estimated = true;
        }
    }
    if usage.output == 0 && answer_bytes > 0 {
        let estimate = estimate_output_tokens(answer_bytes, chunks);
        usage.output = max_tokens.map_or(estimate, |max| estimate.min(max.max(1)));
        usage.estimated = true;
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_are_exact_nanos_rounded_up() {
        let gpt4o = price(2.50, 10.00);
        // 1,000 in × $2.50/M + 500 out × $10/M = $0.0025 + $0.005.
        assert_eq!(gpt4o.cost_of(1_000, 500), Nanos(7_500_000));
        assert_eq!(gpt4o.cost_of(1, 0), Nanos(2_500));
        // $0.0375/M is 37.5 nano-dollars a token: one token costs 38 (rounded up).
        assert_eq!(price(0.0375, 0.0).cost_of(1, 0), Nanos(38));
        assert_eq!(price(0.0375, 0.0).cost_of(2, 0), Nanos(75));
        // Exact where floating point is not: 3 × 1.1 × 1000 = 3300.0000000000005.
        assert_eq!(price(1.10, 4.40).cost_of(3, 0), Nanos(3_300));
        assert_eq!(price(1.10, 4.40).cost_of(0, 7), Nanos(30_800));
        assert_eq!(Price::FREE.cost_of(1_000_000, 1_000_000), Nanos::ZERO);
        assert_eq!(Nanos::from_usd(0.25), Nanos(250_000_000));
        assert_eq!(Nanos(7_500_000).usd(), 0.0075);
        // The largest price and counts stay finite.
        let max = price(MAX_PRICE_PER_MTOK, MAX_PRICE_PER_MTOK);
        assert!(max.cost_of(u64::from(u32::MAX), u64::from(u32::MAX)).0 < u64::MAX);
    }

    #[test]
    fn lookup_prefers_configuration_and_never_prices_unknown_cloud_models_at_zero() {
        let mut pricing = Pricing::default();
        pricing
            .configured
            .insert("llama3:8b".into(), price(0.05, 0.10));
        pricing.configured.insert("gpt-4o".into(), price(2.0, 9.0));
        assert_eq!(
            pricing.lookup("gpt-4o", true),
            PriceSource::Configured(price(2.0, 9.0))
        );
        // Claude, by alias and by dated id.
        for model in ["claude-sonnet-4-6", "claude-sonnet-4-5-20250929"] {
            assert_eq!(
                pricing.lookup(model, true),
                PriceSource::Builtin(price(3.00, 15.00))
            );
        }
        assert_eq!(
            pricing.lookup("gpt-4o-mini", true),
            PriceSource::Builtin(price(0.15, 0.60))
        );
        assert_eq!(
            pricing.lookup("my-cloud-model", true),
            PriceSource::Unpriced
        );
        assert_eq!(pricing.lookup("my-cloud-model", true).price(), None);
        assert_eq!(
            pricing.lookup("llama3:8b", false).price(),
            Some(price(0.05, 0.10))
        );
        assert_eq!(pricing.lookup("mistral", false), PriceSource::LocalFree);
        // A built-in name served by a local provider is still free unless configured.
        assert_eq!(pricing.lookup("gpt-4o-mini", false), PriceSource::LocalFree);
    }

    #[test]
    fn validation_rejects_negative_infinite_and_absurd_prices() {
        assert!(price(2.5, 10.0).validate().is_ok());
        assert!(Price::FREE.validate().is_ok());
        for bad in [
            price(-1.0, 1.0),
            price(1.0, f64::NAN),
            price(f64::INFINITY, 1.0),
            price(1.0, MAX_PRICE_PER_MTOK * 2.0),
        ] {
            let err = bad.validate().unwrap_err();
            assert!(err.contains("per million tokens"), "{err}");
        }
        for (name, p) in BUILTIN_PRICES {
            assert!(p.validate().is_ok(), "{name}");
        }
    }

    #[test]
    fn estimates_never_count_an_answer_as_zero_tokens() {
        assert_eq!(estimate_output_tokens(0, 0), 0);
        assert_eq!(estimate_output_tokens(1, 0), 1);
        assert_eq!(estimate_output_tokens(400, 0), 100);
        // One token per chunk when chunks outnumber bytes / 4.
        assert_eq!(estimate_output_tokens(40, 25), 25);
        assert_eq!(estimate_input_tokens(["12345678"]), 2 + 4);
        assert_eq!(
            estimate_input_tokens(["be brief", "hello"]),
            (2 + 4) + (2 + 4)
        );

        let reported = TokenUsage {
            input: 12,
            output: 30,
            estimated: false,
        };
        assert_eq!(complete_usage(reported, ["hi"], 100, 3, None), reported);
        let none = complete_usage(TokenUsage::default(), ["12345678"], 40, 25, None);
        assert_eq!(
            none,
            TokenUsage {
                input: 6,
                output: 25,
                estimated: true
            }
        );
        // Only the missing count is estimated.
        let half = complete_usage(
            TokenUsage {
                input: 9,
                output: 0,
                estimated: false,
            },
            ["x"],
            8,
            0,
            None,
        );
        assert_eq!((half.input, half.output, half.estimated), (9, 2, true));
        // Never above max_tokens: 20 KB of text in 4096 tokens is not 5,000 tokens.
        let capped = complete_usage(TokenUsage::default(), ["x"], 20_000, 4096, Some(4096));
        assert_eq!(capped.output, 4096);
        // An empty answer with reported input stays as reported.
        let empty = TokenUsage {
            input: 9,
            output: 0,
            estimated: false,
        };
        assert_eq!(complete_usage(empty, ["x"], 0, 0, None), empty);
    }

    #[test]
    fn the_input_bound_is_at_least_one_token_per_byte() {
        let bound = input_tokens_bound(["system", "a prompt of some length"]);
        assert_eq!(bound, (6 + 8) + (23 + 8) + 8);
        assert!(bound >= u64::from(estimate_input_tokens(["system", "a prompt of some length"])));
    }

    proptest::proptest! {
        /// The worst-case bound is never below the estimate, and costs are monotonic in
        /// tokens: more tokens never cost less.
        #[test]
        fn bounds_and_costs_are_monotonic(
            a in proptest::collection::vec(proptest::prelude::any::<String>(), 0..4),
            input in 0u64..10_000_000,
            more in 0u64..1_000_000,
            p_in in 0.0f64..1000.0,
            p_out in 0.0f64..1000.0,
        ) {
            let texts: Vec<&str> = a.iter().map(String::as_str).collect();
            proptest::prop_assert!(
                input_tokens_bound(texts.iter().copied())
                    >= u64::from(estimate_input_tokens(texts.iter().copied()))
            );
            let p = price(p_in, p_out);
            proptest::prop_assert!(p.cost_of(input + more, 0) >= p.cost_of(input, 0));
            proptest::prop_assert!(p.cost_of(0, input + more) >= p.cost_of(0, input));
        }
    }
}
