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
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import GatewayError, InvalidArgument, Unauthenticated
from .outline import ABSTRACT_SECTION_ID, Outline, Section
from .report import CallRecord, Failure, ProgressEvent, Report, one_line
from .types import Delta, Phase, ReportUsage, Result, SectionType

__all__ = [
    "ReportCompiler",
    "DEFAULT_TEMPLATES",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_SYSTEM_PROMPT",
    "slug_report_id",
]

SECTION_PHASES: Tuple[Phase, ...] = (Phase.DRAFT, Phase.EXPAND, Phase.REFINE)

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
            cost_usd=result.cost_usd,
            estimated=result.usage.estimated,
            cached=result.usage.cached,
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
            f"{one_line(str(failure.error))}"
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
