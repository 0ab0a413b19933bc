"""The report compiler: an outline in, a Markdown report and its routing records out.

For every section the compiler runs DRAFT → EXPAND → REFINE, feeding each phase the previous
phase's text; then one ABSTRACT call is fed every refined section. Every call carries the report
id, the section id, the section type and the phase, so the gateway routes it by its matrix and
counts it against the report's cloud budget.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import secrets
import string
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    Any,
    Callable,
    Dict,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import yaml

from .errors import GatewayError, InvalidArgument, Unauthenticated
from .types import Delta, FallbackReason, Phase, ReportUsage, Result, SectionType, Tier

__all__ = [
    "Section",
    "Outline",
    "OutlineError",
    "CallRecord",
    "Failure",
    "Report",
    "ReportCompiler",
    "DEFAULT_TEMPLATES",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_SYSTEM_PROMPT",
]

SECTION_PHASES: Tuple[Phase, ...] = (Phase.DRAFT, Phase.EXPAND, Phase.REFINE)
#: The section id the ABSTRACT call carries.
ABSTRACT_SECTION_ID = "abstract"

DEFAULT_SYSTEM_PROMPT = (
    "You are a careful technical writer. Write clear, accurate Markdown prose for one part of a "
    "technical report. Return only the requested text, without a heading."
)

#: Prompt templates per phase. Placeholders (``{name}``): ``report_title``, ``section_id``,
#: ``section_title``, ``section_type``, ``brief``, ``previous`` (the previous phase's text; empty
#: for DRAFT), ``sections`` (ABSTRACT only: every refined section as ``## title`` + text).
DEFAULT_TEMPLATES: Mapping[Phase, str] = {
    Phase.DRAFT: (
        'Write a first draft of the section "{section_title}" of the technical report '
        '"{report_title}".\n'
        "Section type: {section_type}.\n"
        "Brief: {brief}\n"
        "Cover the essential points in a few concise paragraphs."
    ),
    Phase.EXPAND: (
        'Expand this draft of the section "{section_title}" of the technical report '
        '"{report_title}" with concrete details, examples and evidence. Keep its structure.\n'
        "Brief: {brief}\n\n"
        "Draft:\n{previous}"
    ),
    Phase.REFINE: (
        'Refine this text of the section "{section_title}" of the technical report '
        '"{report_title}": make it accurate, clear and concise, fix errors and remove '
        "repetition. Return only the final text.\n\n"
        "Text:\n{previous}"
    ),
    Phase.ABSTRACT: (
        'Write the abstract of the technical report "{report_title}" in one paragraph of at most '
        "200 words, covering every section below.\n\n{sections}"
    ),
}

#: ``max_tokens`` per phase unless overridden.
DEFAULT_MAX_TOKENS: Mapping[Phase, int] = {
    Phase.DRAFT: 800,
    Phase.EXPAND: 1500,
    Phase.REFINE: 1500,
    Phase.ABSTRACT: 400,
}

_PLACEHOLDERS = frozenset(
    {"report_title", "section_id", "section_title", "section_type", "brief", "previous", "sections"}
)


class OutlineError(ValueError):
    """The outline is malformed (the message says where)."""


@dataclass(frozen=True)
class Section:
    """One section of an outline.

    Attributes:
        id: the section id sent with every call, e.g. ``"2"`` or ``"2.1"``.
        title: its heading in the report.
        type: its :class:`~vra_gateway.SectionType` (DRAFT routing depends on it).
        brief: what the section should say (optional).
    """

    id: str
    title: str
    type: SectionType
    brief: str = ""


@dataclass(frozen=True)
class Outline:
    """A report outline: a title, an optional report id and the sections in order.

    Build one with :meth:`load` (a YAML file like ``examples/outline.yaml``), :meth:`from_yaml`
    or :meth:`from_dict`.
    """

    title: str
    sections: Tuple[Section, ...]
    report_id: Optional[str] = None

    @classmethod
    def load(cls, path: Union[str, "os.PathLike[str]"]) -> "Outline":
        """Reads a YAML outline file.

        Raises:
            OutlineError: the file cannot be read, is not YAML, or is not a valid outline.
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise OutlineError(f"{os.fspath(path)}: {e.strerror}") from e
        except UnicodeDecodeError as e:
            raise OutlineError(f"{os.fspath(path)}: not UTF-8 text") from e
        return cls.from_yaml(text, source=os.fspath(path))

    @classmethod
    def from_yaml(cls, text: str, source: str = "outline") -> "Outline":
        """Parses a YAML outline. Raises :class:`OutlineError`."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise OutlineError(f"{source}: not valid YAML: {e}") from e
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: Any, source: str = "outline") -> "Outline":
        """Validates a mapping with ``title``, optional ``report_id`` and ``sections`` (each with
        ``id``, ``title``, ``type`` — a section type name in any case — and optional ``brief``).

        Raises:
            OutlineError: naming the source and the bad key.
        """
        if not isinstance(data, Mapping):
            raise OutlineError(f"{source}: expected a mapping with title and sections")
        title = data.get("title")
        if not isinstance(title, str) or not title.strip():
            raise OutlineError(f"{source}: title: must be a non-empty string")
        report_id = data.get("report_id")
        if report_id is not None and (not isinstance(report_id, str) or not report_id.strip()):
            raise OutlineError(f"{source}: report_id: must be a non-empty string when set")
        raw_sections = data.get("sections")
        if not isinstance(raw_sections, list) or not raw_sections:
            raise OutlineError(f"{source}: sections: must be a non-empty list")
        sections: List[Section] = []
        seen = set()
        for i, raw in enumerate(raw_sections):
            where = f"{source}: sections[{i}]"
            if not isinstance(raw, Mapping):
                raise OutlineError(f"{where}: expected a mapping with id, title and type")
            sid = raw.get("id")
            if isinstance(sid, (int, float)) and not isinstance(sid, bool):
                sid = str(sid)
            if not isinstance(sid, str) or not sid.strip():
                raise OutlineError(f"{where}.id: must be a non-empty string")
            if sid == ABSTRACT_SECTION_ID or sid in seen:
                raise OutlineError(f"{where}.id: {sid!r} is used twice or reserved")
            seen.add(sid)
            stitle = raw.get("title")
            if not isinstance(stitle, str) or not stitle.strip():
                raise OutlineError(f"{where}.title: must be a non-empty string")
            raw_type = raw.get("type")
            if not isinstance(raw_type, str):
                raise OutlineError(f"{where}.type: must be a section type name, e.g. INTRODUCTION")
            try:
                stype = SectionType.parse(raw_type)
            except ValueError as e:
                raise OutlineError(f"{where}.type: {e}") from None
            brief = raw.get("brief", "") or ""
            if not isinstance(brief, str):
                raise OutlineError(f"{where}.brief: must be a string")
            sections.append(Section(id=sid, title=stitle.strip(), type=stype, brief=brief.strip()))
        return cls(title=title.strip(), sections=tuple(sections), report_id=report_id)


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
                _section_label(r.section_id, r.section_title),
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
                _section_label(f.section_id, f.section_title),
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


def _section_label(section_id: str, title: str) -> str:
    return title if section_id == ABSTRACT_SECTION_ID else f"{section_id} {title}"


def slug_report_id(title: str) -> str:
    """A fresh report id: a slug of ``title`` plus 8 random hex digits, e.g. ``q3-report-1a2b3c4d``."""
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:48].strip("-") or "report"
    return f"{slug}-{secrets.token_hex(4)}"


def _check_template(phase: Phase, template: str) -> None:
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise ValueError(f"template for {phase.name}: {e}") from None
    unknown = {n for n in names if n not in _PLACEHOLDERS}
    if unknown:
        raise ValueError(
            f"template for {phase.name}: unknown placeholder(s) {sorted(unknown)}; "
            f"known: {sorted(_PLACEHOLDERS)}"
        )


def _one_line(text: str) -> str:
    return " ".join(text.split())


@dataclass
class _Outcome:
    """The text a section ended with, or the failure that stopped it."""

    text: Optional[str] = None
    failure: Optional[Failure] = None


class ReportCompiler:
    """Compiles an outline into a report through the gateway.

    Args:
        client: a :class:`~vra_gateway.GatewayClient` for :meth:`compile`, or an
            :class:`~vra_gateway.AsyncGatewayClient` for :meth:`compile_async`.
        outline: an :class:`Outline`, a mapping of the same shape, or the path of a YAML file.
        report_id: default: the outline's, else a slug of the title plus 8 random hex digits.
        templates: prompt templates per phase (a :class:`~vra_gateway.Phase` or its name), merged
            over :data:`DEFAULT_TEMPLATES`; placeholders are listed there.
        system_prompt: sent with every call (default :data:`DEFAULT_SYSTEM_PROMPT`; ``""`` for none).
        max_tokens: per phase (merged over :data:`DEFAULT_MAX_TOKENS`), or one int for all phases.
        concurrency: sections compiled in parallel (default 2); the ABSTRACT runs after all.
        stream: use ``generate_stream`` and pass every delta to ``on_delta``.
        on_delta: ``on_delta(section_id, phase, text)`` for each streamed delta. If a streamed
            call fails and is retried, the retry's deltas start over.
        on_progress: ``on_progress(event)`` after each call: a :class:`CallRecord`, or a
            :class:`Failure` once a call failed for good.
        retry_delay: seconds to wait before retrying a failed call (default 0.25).

    Callbacks are called one at a time (under a lock), from worker threads with the sync client.

    A failing call is retried once (:class:`~vra_gateway.InvalidArgument` and
    :class:`~vra_gateway.Unauthenticated` are not retried); if it fails again, the section stops
    there, appears in :attr:`Report.failures` and as a visible placeholder in the Markdown.
    """

    def __init__(
        self,
        client: Any,
        outline: Union[Outline, Mapping[str, Any], str, "os.PathLike[str]"],
        *,
        report_id: Optional[str] = None,
        templates: Union[Mapping[Phase, str], Mapping[str, str], None] = None,
        system_prompt: Optional[str] = None,
        max_tokens: Union[int, Mapping[Phase, int], Mapping[str, int], None] = None,
        concurrency: int = 2,
        stream: bool = False,
        on_delta: Optional[Callable[[str, Phase, str], None]] = None,
        on_progress: Optional[Callable[[ProgressEvent], None]] = None,
        retry_delay: float = 0.25,
    ) -> None:
        if isinstance(outline, Outline):
            self.outline = outline
        elif isinstance(outline, Mapping):
            self.outline = Outline.from_dict(outline)
        else:
            self.outline = Outline.load(outline)
        self.client = client
        self.report_id = report_id or self.outline.report_id or slug_report_id(self.outline.title)

        self.templates: Dict[Phase, str] = dict(DEFAULT_TEMPLATES)
        for key, template in (templates or {}).items():
            self.templates[Phase.parse(key)] = template
        for phase, template in self.templates.items():
            _check_template(phase, template)

        self.max_tokens: Dict[Phase, int] = dict(DEFAULT_MAX_TOKENS)
        if isinstance(max_tokens, int):
            self.max_tokens = {phase: max_tokens for phase in Phase}
        elif max_tokens is not None:
            for key, value in max_tokens.items():
                self.max_tokens[Phase.parse(key)] = value
        if any(v <= 0 for v in self.max_tokens.values()):
            raise ValueError("max_tokens must be positive")

        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.system_prompt = DEFAULT_SYSTEM_PROMPT if system_prompt is None else system_prompt
        self.concurrency = concurrency
        self.stream = stream
        self.on_delta = on_delta
        self.on_progress = on_progress
        self.retry_delay = retry_delay

        self._lock = threading.Lock()
        self._records: List[CallRecord] = []
        self._failures: List[Failure] = []

    # ---- shared by the sync and the async path -------------------------------------------

    def _reset(self) -> None:
        self._records = []
        self._failures = []

    def _prompt(self, section: Optional[Section], phase: Phase, previous: str, sections: str = "") -> str:
        values = {
            "report_title": self.outline.title,
            "section_id": section.id if section else ABSTRACT_SECTION_ID,
            "section_title": section.title if section else "Abstract",
            "section_type": section.type.name if section else SectionType.OTHER.name,
            "brief": section.brief if section else "",
            "previous": previous,
            "sections": sections,
        }
        return self.templates[phase].format_map(values)

    def _call_args(self, section: Optional[Section], phase: Phase, prompt: str) -> Dict[str, Any]:
        return {
            "report_id": self.report_id,
            "section_id": section.id if section else ABSTRACT_SECTION_ID,
            "phase": phase,
            "prompt": prompt,
            "section_type": section.type if section else SectionType.OTHER,
            "system_prompt": self.system_prompt or None,
            "max_tokens": self.max_tokens[phase],
        }

    def _succeeded(
        self, section: Optional[Section], phase: Phase, result: Result, started: float, retries: int
    ) -> None:
        r = result.route
        record = CallRecord(
            section_id=section.id if section else ABSTRACT_SECTION_ID,
            section_title=section.title if section else "Abstract",
            phase=phase,
            tier=r.tier,
            provider=r.provider,
            model=r.model,
            rule=r.rule,
            fallback_reason=r.fallback_reason,
            attempts=result.attempts,
            input_tokens=result.usage.input_tokens,
            output_tokens=result.usage.output_tokens,
            latency_ms=round((time.monotonic() - started) * 1000, 1),
            streamed=self.stream,
            retries=retries,
            cloud=r.cloud,
        )
        with self._lock:
            self._records.append(record)
            if self.on_progress:
                self.on_progress(record)

    def _failed(self, section: Optional[Section], phase: Phase, error: GatewayError, tries: int) -> Failure:
        failure = Failure(
            section_id=section.id if section else ABSTRACT_SECTION_ID,
            section_title=section.title if section else "Abstract",
            phase=phase,
            error=error,
            tries=tries,
        )
        with self._lock:
            self._failures.append(failure)
            if self.on_progress:
                self.on_progress(failure)
        return failure

    def _delta(self, section: Optional[Section], phase: Phase, text: str) -> None:
        if self.on_delta:
            with self._lock:
                self.on_delta(section.id if section else ABSTRACT_SECTION_ID, phase, text)

    @staticmethod
    def _retryable(error: GatewayError) -> bool:
        return not isinstance(error, (InvalidArgument, Unauthenticated))

    @staticmethod
    def _placeholder(failure: Failure) -> str:
        tries = "once" if failure.tries == 1 else f"{failure.tries} times"
        return (
            f"> **[Not compiled]** the {failure.phase.name} call failed ({tries}): "
            f"{_one_line(str(failure.error))}"
        )

    def _abstract_input(self, outcomes: Sequence[_Outcome]) -> str:
        parts = [
            f"## {s.title}\n\n{o.text}" for s, o in zip(self.outline.sections, outcomes) if o.text is not None
        ]
        return "\n\n".join(parts) if parts else "(no section could be compiled)"

    def _finish(
        self,
        outcomes: Sequence[_Outcome],
        abstract: _Outcome,
        usage: Optional[ReportUsage],
        usage_error: Optional[GatewayError],
    ) -> Report:
        order = {s.id: i for i, s in enumerate(self.outline.sections)}
        order[ABSTRACT_SECTION_ID] = len(order)
        phase_order = {p: i for i, p in enumerate(Phase)}
        key = lambda e: (order[e.section_id], phase_order[e.phase])  # noqa: E731
        parts = [f"# {self.outline.title}", "## Abstract", self._body(abstract)]
        for section, outcome in zip(self.outline.sections, outcomes):
            parts += [f"## {section.title}", self._body(outcome)]
        return Report(
            report_id=self.report_id,
            title=self.outline.title,
            markdown="\n\n".join(parts) + "\n",
            records=sorted(self._records, key=key),
            failures=sorted(self._failures, key=key),
            usage=usage,
            usage_error=usage_error,
        )

    def _body(self, outcome: _Outcome) -> str:
        if outcome.text is not None:
            return outcome.text.strip()
        assert outcome.failure is not None
        return self._placeholder(outcome.failure)

    # ---- sync ------------------------------------------------------------------------------

    def compile(self) -> Report:
        """Compiles the report with a sync client, ``concurrency`` sections at a time (threads).

        Returns the :class:`Report`; failed calls are in ``report.failures``, not raised.
        """
        if inspect.iscoroutinefunction(getattr(self.client, "generate", None)):
            raise TypeError("compile() needs a GatewayClient; use compile_async() with AsyncGatewayClient")
        self._reset()
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="vra-compile") as pool:
            outcomes = list(pool.map(self._section_sync, self.outline.sections))
        abstract = self._phase_sync(
            None, Phase.ABSTRACT, self._prompt(None, Phase.ABSTRACT, "", self._abstract_input(outcomes))
        )
        usage: Optional[ReportUsage] = None
        usage_error: Optional[GatewayError] = None
        try:
            usage = self.client.report_usage(self.report_id)
        except GatewayError as e:
            usage_error = e
        return self._finish(outcomes, abstract, usage, usage_error)

    def _section_sync(self, section: Section) -> _Outcome:
        previous = ""
        for phase in SECTION_PHASES:
            outcome = self._phase_sync(section, phase, self._prompt(section, phase, previous))
            if outcome.text is None:
                return outcome
            previous = outcome.text
        return _Outcome(text=previous)

    def _phase_sync(self, section: Optional[Section], phase: Phase, prompt: str) -> _Outcome:
        args = self._call_args(section, phase, prompt)
        for attempt in range(2):
            started = time.monotonic()
            try:
                result = self._generate_sync(section, phase, args)
            except GatewayError as error:
                if attempt == 0 and self._retryable(error):
                    time.sleep(self.retry_delay)
                    continue
                return _Outcome(failure=self._failed(section, phase, error, attempt + 1))
            self._succeeded(section, phase, result, started, attempt)
            return _Outcome(text=result.text)
        raise AssertionError("unreachable")

    def _generate_sync(self, section: Optional[Section], phase: Phase, args: Dict[str, Any]) -> Result:
        if not self.stream:
            return self.client.generate(**args)  # type: ignore[no-any-return]
        for event in self.client.generate_stream(**args):
            if isinstance(event, Delta):
                self._delta(section, phase, event.text)
            else:
                return event  # type: ignore[no-any-return]
        raise GatewayError("DATA_LOSS", "the stream ended without its final message")

    # ---- async -----------------------------------------------------------------------------

    async def compile_async(self) -> Report:
        """Compiles the report with an :class:`~vra_gateway.AsyncGatewayClient`, ``concurrency``
        sections at a time (tasks). Same result as :meth:`compile`."""
        if not inspect.iscoroutinefunction(getattr(self.client, "generate", None)):
            raise TypeError("compile_async() needs an AsyncGatewayClient; use compile() with GatewayClient")
        self._reset()
        gate = asyncio.Semaphore(self.concurrency)

        async def one(section: Section) -> _Outcome:
            async with gate:
                return await self._section_async(section)

        outcomes = await asyncio.gather(*(one(s) for s in self.outline.sections))
        abstract = await self._phase_async(
            None, Phase.ABSTRACT, self._prompt(None, Phase.ABSTRACT, "", self._abstract_input(outcomes))
        )
        usage: Optional[ReportUsage] = None
        usage_error: Optional[GatewayError] = None
        try:
            usage = await self.client.report_usage(self.report_id)
        except GatewayError as e:
            usage_error = e
        return self._finish(outcomes, abstract, usage, usage_error)

    async def _section_async(self, section: Section) -> _Outcome:
        previous = ""
        for phase in SECTION_PHASES:
            outcome = await self._phase_async(section, phase, self._prompt(section, phase, previous))
            if outcome.text is None:
                return outcome
            previous = outcome.text
        return _Outcome(text=previous)

    async def _phase_async(self, section: Optional[Section], phase: Phase, prompt: str) -> _Outcome:
        args = self._call_args(section, phase, prompt)
        for attempt in range(2):
            started = time.monotonic()
            try:
                result = await self._generate_async(section, phase, args)
            except GatewayError as error:
                if attempt == 0 and self._retryable(error):
                    await asyncio.sleep(self.retry_delay)
                    continue
                return _Outcome(failure=self._failed(section, phase, error, attempt + 1))
            self._succeeded(section, phase, result, started, attempt)
            return _Outcome(text=result.text)
        raise AssertionError("unreachable")

    async def _generate_async(self, section: Optional[Section], phase: Phase, args: Dict[str, Any]) -> Result:
        if not self.stream:
            return await self.client.generate(**args)  # type: ignore[no-any-return]
        async for event in self.client.generate_stream(**args):
            if isinstance(event, Delta):
                self._delta(section, phase, event.text)
            else:
                return event  # type: ignore[no-any-return]
        raise GatewayError("DATA_LOSS", "the stream ended without its final message")
