"""What a compilation returns: the Markdown, one record per call, the failures and the usage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

from .errors import GatewayError
from .outline import ABSTRACT_SECTION_ID
from .types import FallbackReason, Phase, ReportUsage, Tier

__all__ = ["CallRecord", "Failure", "ProgressEvent", "Report", "section_label", "usd"]


@dataclass(frozen=True)
class CallRecord:
    """One successful call of a compilation.

    Attributes:
        section_id: the section (``"abstract"`` for the ABSTRACT).
        section_title: its title (``"Abstract"``).
        phase: the phase.
        tier, provider, model, rule, fallback_reason: the gateway's :class:`~vra_gateway.Route`.
        attempts: upstream HTTP requests the gateway made for the call.
        input_tokens, output_tokens: token usage.
        latency_ms: wall time of the successful call in milliseconds.
        streamed: whether the call used ``generate_stream``.
        retries: how often the compiler retried the call before it succeeded (0 or 1).
        cloud: whether the serving provider is cloud tier.
        cost_usd: the call's cost in USD; ``None`` when its model has no price (unknown).
        estimated: the token counts are (partly) estimates; the upstream did not report them.
        cached: answered from the gateway's response cache (nothing sent upstream, no budget
            spent; the token counts are the original call's).
    """

    section_id: str
    section_title: str
    phase: Phase
    tier: Tier
    provider: str
    model: str
    rule: str
    fallback_reason: FallbackReason
    attempts: int
    input_tokens: int
    output_tokens: int
    latency_ms: float
    streamed: bool
    retries: int = 0
    cloud: bool = False
    cost_usd: Optional[float] = None
    estimated: bool = False
    cached: bool = False


@dataclass(frozen=True)
class Failure:
    """A call that failed for good (after its retry); its section is a placeholder in the Markdown.

    Attributes:
        section_id, section_title: the section (``"abstract"`` / ``"Abstract"`` for the ABSTRACT).
        phase: the phase that failed; the section's later phases were not attempted.
        error: the last error.
        tries: how often the call was tried (1 for errors that are not retried, else 2).
    """

    section_id: str
    section_title: str
    phase: Phase
    error: GatewayError
    tries: int


ProgressEvent = Union[CallRecord, Failure]


@dataclass
class Report:
    """The compiled report.

    Attributes:
        report_id: the id every call carried.
        title: the outline's title.
        markdown: ``# title``, ``## Abstract``, then ``## <section title>`` per section in outline
            order; a failed section is a visible placeholder.
        records: one per successful call, in outline and phase order, the ABSTRACT last.
        failures: the calls that failed for good.
        usage: the report's final usage, ``None`` if ``report_usage`` failed (see ``usage_error``).
        usage_error: why ``usage`` is missing.
    """

    report_id: str
    title: str
    markdown: str
    records: List[CallRecord] = field(default_factory=list)
    failures: List[Failure] = field(default_factory=list)
    usage: Optional[ReportUsage] = None
    usage_error: Optional[GatewayError] = None

    @property
    def ok(self) -> bool:
        """True when every call succeeded and the usage could be read."""
        return not self.failures and self.usage_error is None

    def routing_table(self) -> str:
        """The routing table: section, phase, tier, provider, model, rule, fallback, attempts.

        A ``*`` after the phase marks a streamed call; failed calls are listed as ``FAILED``.
        """
        header = ("section", "phase", "tier", "provider", "model", "rule", "fallback", "attempts")
        rows: List[Tuple[str, ...]] = [
            (
                section_label(r.section_id, r.section_title),
                r.phase.name + ("*" if r.streamed else ""),
                r.tier.name,
                r.provider,
                r.model,
                r.rule,
                "-" if r.fallback_reason is FallbackReason.NONE else r.fallback_reason.name,
                str(r.attempts),
            )
            for r in self.records
        ]
        rows += [
            (
                section_label(f.section_id, f.section_title),
                f.phase.name,
                "FAILED",
                "-",
                "-",
                "-",
                f.error.code,
                "-",
            )
            for f in self.failures
        ]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

        def line(row: Sequence[str]) -> str:
            return "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()

        total = sum(widths) + 2 * (len(widths) - 1)
        return "\n".join([line(header), "-" * total, *(line(r) for r in rows)])

    def budget_line(self) -> str:
        """``report ID: cloud calls used X/Y`` (``— exhausted`` when no cloud call is left)."""
        if self.usage is None:
            reason = f": {self.usage_error}" if self.usage_error else ""
            return f"report {self.report_id}: cloud calls used unknown (usage unavailable{reason})"
        b = self.usage.budget
        tail = " — exhausted" if b.exhausted else ""
        return f"report {self.report_id}: cloud calls used {b.cloud_calls_used}/{b.cloud_calls_limit}{tail}"

    def cost_line(self) -> str:
        """``report ID: cost $T (cloud $C, local $L); all on the primary model $A; saved $S (P%)``.

        Amounts in USD with 6 decimals. The all-cloud equivalent and the savings read ``unknown``
        when the primary model has no price; calls of unpriced models are named, since the sums
        are then lower bounds.
        """
        if self.usage is None:
            reason = f": {self.usage_error}" if self.usage_error else ""
            return f"report {self.report_id}: cost unknown (usage unavailable{reason})"
        c = self.usage.cost
        parts = [
            f"report {self.report_id}: cost {usd(c.total_usd)} "
            f"(cloud {usd(c.cloud_usd)}, local {usd(c.local_usd)})"
        ]
        if c.all_cloud_usd is None:
            parts.append("all on the primary model unknown (it has no price)")
        else:
            parts.append(f"all on the primary model {usd(c.all_cloud_usd)}")
        if c.savings_usd is None:
            parts.append("saved unknown")
        else:
            share = (
                f" ({100 * c.savings_usd / c.all_cloud_usd:.0f}%)"
                if c.all_cloud_usd is not None and c.all_cloud_usd > 0
                else ""
            )
            parts.append(f"saved {usd(c.savings_usd)}{share}")
        line = "; ".join(parts)
        if c.unpriced_calls:
            line += f" — {c.unpriced_calls} call(s) of unpriced models not counted (sums are lower bounds)"
        return line


def usd(amount: float) -> str:
    """``$0.000548``: USD with 6 decimals (the gateway's cost table uses the same)."""
    return f"${amount:.6f}"


def section_label(section_id: str, title: str) -> str:
    """How tables and progress lines name a section: ``"2 Methodology"``, or ``"Abstract"``."""
    return title if section_id == ABSTRACT_SECTION_ID else f"{section_id} {title}"


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines too) collapsed to one space."""
    return " ".join(text.split())
