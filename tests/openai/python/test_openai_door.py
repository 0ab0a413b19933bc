"""The official `openai` Python library against the gateway's OpenAI-compatible door.

Each test starts `vra-gateway demo --serve` (the real gateway in front of simulated upstreams
that speak the real OpenAI and Ollama wire formats) and talks to its door exactly as a report
builder would: `OpenAI(base_url=…, api_key=…)`, the report in headers or `metadata`.
The binary is `$VRA_GATEWAY_BIN`, else `<repo>/target/debug/vra-gateway`.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence

import openai
import pytest
from openai import OpenAI

REPO = Path(__file__).resolve().parents[3]
DOOR = re.compile(r"OpenAI-compatible door on (\S+)")


def binary() -> Path:
    return Path(os.environ.get("VRA_GATEWAY_BIN") or REPO / "target" / "debug" / "vra-gateway")


class Sandbox:
    """`vra-gateway demo --serve` with its door on a free port."""

    def __init__(self, env: Optional[Dict[str, str]] = None, args: Sequence[str] = ()) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("VRA_") and k != "MAX_CLOUD_CALLS"}
        base.update({"VRA_GATEWAY_ADDR": "127.0.0.1:0", "VRA_HTTP_ADDR": "127.0.0.1:0"})
        base.update(env or {})
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [str(binary()), "demo", "--serve", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=base,
            text=True,
        )
        lines: "queue.Queue[Optional[str]]" = queue.Queue()

        def pump() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        while True:
            line = lines.get(timeout=30)
            if line is None:
                raise RuntimeError(f"the sandbox exited: {self.stderr()}")
            found = DOOR.search(line)
            if found:
                self.base_url = found.group(1)
                break

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def client(self, api_key: str = "unused") -> OpenAI:
        # No retries: each test sees the gateway's own answer.
        return OpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, timeout=30)

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=30) == 0, self.stderr()
        return self.stderr()


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    if not binary().is_file():
        if os.environ.get("VRA_REQUIRE_SDK", "") not in ("", "0", "false"):
            pytest.fail(f"no gateway binary at {binary()}")
        pytest.skip(f"no gateway binary at {binary()} (cargo build)")
    box = Sandbox({"MAX_CLOUD_CALLS": "3"})
    yield box
    box.stop()


def report(report_id: str, phase: str, section: str = "OTHER") -> Dict[str, str]:
    return {
        "x-vra-report-id": report_id,
        "x-vra-section-id": "1",
        "x-vra-phase": phase,
        "x-vra-section-type": section,
    }


MESSAGES = [
    {"role": "system", "content": "You write technical reports."},
    {"role": "user", "content": "Write the section."},
]


def test_a_unary_call_is_routed_and_says_how(sandbox: Sandbox) -> None:
    raw = sandbox.client().chat.completions.with_raw_response.create(
        model="vra-auto", messages=MESSAGES, extra_headers=report("py-1", "REFINE", "ANALYSIS")
    )
    completion = raw.parse()
    assert completion.model == "gpt-4o"
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.total_tokens > 0
    assert raw.headers["x-vra-tier"] == "PRIMARY"
    assert raw.headers["x-vra-rule"] == "refine-primary"
    assert raw.headers["x-vra-fallback-reason"] == "none"
    assert raw.headers["x-vra-cloud-calls-used"] == "1"
    assert raw.headers["x-request-id"] == completion.id


EXPECTED = {  # (phase, section type) -> (tier, rule), the routing matrix with hybrid mode on
    ("DRAFT", "INTRODUCTION"): ("PRIMARY", "draft-reasoning-primary"),
    ("DRAFT", "METHODOLOGY"): ("SECONDARY", "draft-template-secondary"),
    ("DRAFT", "OTHER"): ("PRIMARY", "draft-default-primary"),
    ("EXPAND", "ANALYSIS"): ("SECONDARY", "expand-secondary"),
    ("REFINE", "CONCLUSION"): ("PRIMARY", "refine-primary"),
    ("ABSTRACT", "OTHER"): ("PRIMARY", "abstract-always-primary"),
}


@pytest.mark.parametrize("carrier", ["headers", "metadata"])
def test_the_matrix_over_every_phase(sandbox: Sandbox, carrier: str) -> None:
    client = sandbox.client()
    for i, ((phase, section), (tier, rule)) in enumerate(EXPECTED.items()):
        report_id = f"py-matrix-{carrier}-{i}"
        if carrier == "headers":
            raw = client.chat.completions.with_raw_response.create(
                model="vra-auto", messages=MESSAGES, extra_headers=report(report_id, phase, section)
            )
        else:
            raw = client.chat.completions.with_raw_response.create(
                model="vra-auto",
                messages=MESSAGES,
                metadata={
                    "vra_report_id": report_id,
                    "vra_section_id": "1",
                    "vra_phase": phase.lower(),
                    "vra_section_type": section,
                },
            )
        assert (raw.headers["x-vra-tier"], raw.headers["x-vra-rule"]) == (tier, rule), (phase, section)


def test_a_stream_with_usage(sandbox: Sandbox) -> None:
    stream = sandbox.client().chat.completions.create(
        model="vra-auto",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=report("py-stream", "DRAFT", "INTRODUCTION"),
    )
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert text
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens > 0


def test_the_budget_then_cost_limit(sandbox: Sandbox) -> None:
    client = sandbox.client()
    tiers = []
    for _ in range(4):
        raw = client.chat.completions.with_raw_response.create(
            model="vra-auto", messages=MESSAGES, extra_headers=report("py-budget", "REFINE")
        )
        tiers.append((raw.headers["x-vra-tier"], raw.headers["x-vra-fallback-reason"]))
    assert tiers == [("PRIMARY", "none")] * 3 + [("SECONDARY", "COST_LIMIT")]


def test_a_pinned_model_and_an_unknown_one(sandbox: Sandbox) -> None:
    client = sandbox.client()
    raw = client.chat.completions.with_raw_response.create(
        model="llama3:8b", messages=MESSAGES, extra_headers=report("py-pin", "REFINE")
    )
    assert (raw.headers["x-vra-tier"], raw.headers["x-vra-rule"]) == ("SECONDARY", "pinned")
    assert raw.parse().model == "llama3:8b"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gpt-9", messages=MESSAGES, extra_headers=report("py-pin", "REFINE"))
    assert e.value.code == "model_not_found"
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "vra-auto" and "gpt-4o" in ids and "llama3:8b" in ids


def test_what_cannot_be_honoured_is_refused_naming_it(sandbox: Sandbox) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        sandbox.client().chat.completions.create(
            model="vra-auto",
            messages=MESSAGES,
            tools=[{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
            extra_headers=report("py-bad", "DRAFT"),
        )
    assert e.value.param == "tools"
    with pytest.raises(openai.BadRequestError) as e:
        sandbox.client().chat.completions.create(model="vra-auto", messages=MESSAGES)
    assert e.value.param == "x-vra-report-id"


def test_the_api_key_is_a_token_of_the_clients_file() -> None:
    if not binary().is_file():
        pytest.skip(f"no gateway binary at {binary()}")
    token = "vra_python_door_token_0123456789"
    import hashlib

    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(f'[[client]]\nid = "py"\ntoken_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n')
    box = Sandbox({"VRA_CLIENTS_FILE": f.name})
    try:
        with pytest.raises(openai.AuthenticationError):
            box.client("vra_wrong").chat.completions.create(
                model="vra-auto", messages=MESSAGES, extra_headers=report("py-auth", "EXPAND")
            )
        ok = box.client(token).chat.completions.create(
            model="vra-auto", messages=MESSAGES, extra_headers=report("py-auth", "EXPAND")
        )
        assert ok.choices[0].message.content
    finally:
        logs = box.stop()
        os.unlink(f.name)
    assert token not in logs


def test_a_conversation_with_earlier_turns() -> None:
    """System, user and assistant turns go through as a conversation."""
    if not binary().is_file():
        pytest.skip(f"no gateway binary at {binary()}")
    box = Sandbox()
    try:
        answer = box.client().chat.completions.create(
            model="vra-auto",
            messages=[
                {"role": "system", "content": "You write technical reports."},
                {"role": "user", "content": "Draft the analysis."},
                {"role": "assistant", "content": "1. Data 2. Findings"},
                {"role": "user", "content": [{"type": "text", "text": "Expand point 2."}]},
            ],
            extra_headers=report("py-conv", "EXPAND", "ANALYSIS"),
        )
        assert answer.choices[0].message.content
        assert answer.choices[0].finish_reason == "stop"
    finally:
        box.stop()


def test_shedding_is_429_and_the_deadline_504() -> None:
    """A client past its max_in_flight gets RateLimitError (429, Retry-After); a caller's
    deadline (x-vra-timeout-ms) that passes before the upstream answers gets 504."""
    if not binary().is_file():
        pytest.skip(f"no gateway binary at {binary()}")
    import hashlib

    token = "vra_python_busy_token_0123456789"
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(
            f'[[client]]\nid = "busy"\nmax_in_flight = 1\n'
            f'token_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n'
        )
    # Every simulated answer takes 2 s: long enough to hold a slot, or to miss a deadline.
    box = Sandbox({"VRA_CLIENTS_FILE": f.name}, args=["--upstream-delay-ms", "2000"])
    try:
        client = box.client(token)
        # Two calls at once; the upstream holds each for 2 s, so exactly one is admitted and
        # the other is shed.
        outcomes: "queue.Queue[object]" = queue.Queue()

        def call() -> None:
            try:
                outcomes.put(
                    client.chat.completions.create(
                        model="vra-auto", messages=MESSAGES, extra_headers=report("py-shed", "EXPAND")
                    )
                )
            except Exception as e:  # sorted below
                outcomes.put(e)

        threads = [threading.Thread(target=call) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        results = [outcomes.get_nowait() for _ in threads]
        shed = [r for r in results if isinstance(r, openai.RateLimitError)]
        served = [r for r in results if not isinstance(r, Exception)]
        assert len(shed) == 1 and len(served) == 1, results
        assert shed[0].status_code == 429
        assert shed[0].code == "rate_limit_exceeded"
        assert shed[0].response.headers.get("retry-after") == "1"

        with pytest.raises(openai.InternalServerError) as e:
            client.chat.completions.create(
                model="vra-auto",
                messages=MESSAGES,
                extra_headers={**report("py-deadline", "REFINE"), "x-vra-timeout-ms": "300"},
            )
        assert e.value.status_code == 504
        assert e.value.code == "timeout"
    finally:
        box.stop()
        os.unlink(f.name)


def test_the_response_cache_through_the_official_client() -> None:
    """VRA_CACHE=memory: a repeated request is a hit (`x-vra-cache: HIT`, the same completion and
    usage); `Cache-Control: no-cache` skips the lookup; `only-if-cached` without an answer is the
    library's NotFoundError, raised at once (a 404 is not retried)."""
    if not binary().is_file():
        pytest.skip(f"no gateway binary at {binary()}")
    box = Sandbox({"VRA_CACHE": "memory"})
    try:
        client = box.client()
        create = client.chat.completions.with_raw_response.create
        headers = report("py-cache-1", "REFINE", "ANALYSIS")
        first = create(model="vra-auto", messages=MESSAGES, extra_headers=headers)
        assert first.headers["x-vra-cache"] == "MISS"
        again = create(model="vra-auto", messages=MESSAGES, extra_headers=report("py-cache-2", "REFINE", "ANALYSIS"))
        assert again.headers["x-vra-cache"] == "HIT"
        assert again.headers["x-vra-attempts"] == "0"
        assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
        assert again.parse().usage == first.parse().usage
        fresh = create(
            model="vra-auto", messages=MESSAGES, extra_headers={**headers, "cache-control": "no-cache"}
        )
        assert fresh.headers["x-vra-cache"] == "BYPASS"
        with pytest.raises(openai.NotFoundError) as missing:
            client.with_options(max_retries=2).chat.completions.create(
                model="vra-auto",
                messages=[{"role": "user", "content": "Never asked."}],
                extra_headers={**headers, "cache-control": "only-if-cached"},
            )
        assert missing.value.code == "not_cached"
    finally:
        box.stop()
