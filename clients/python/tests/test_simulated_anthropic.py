"""The simulated Anthropic upstream against the official `anthropic` package's types.

The gateway's tests replace Claude with an in-process server speaking Anthropic's Messages wire
format (`vra_gateway::demo::sim`, the cloud upstream of `vra-gateway demo --serve`). Here its
answers are validated with the official library (pinned in requirements-dev.txt): a message and
every streamed event through the package's pydantic models, and the same server driven by the
`anthropic` client itself, unary and streaming, so the simulation cannot drift from the real
format unnoticed.
"""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any, Dict, Iterator, List, Tuple

import anthropic
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

SIMULATED = re.compile(r"simulated cloud upstream: (http://[0-9.]+:[0-9]+) ")
HEADERS = {"x-api-key": "sk-ant-unused", "anthropic-version": "2023-06-01"}
REQUEST: Dict[str, Any] = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 64,
    "system": "Be terse.",
    "messages": [{"role": "user", "content": "Write the introduction."}],
}


def post(base: str, body: Dict[str, Any]) -> Tuple[int, str, Iterator[str]]:
    """POSTs `body` to `{base}/v1/messages`: the status, the content type and the body's lines."""
    request = urllib.request.Request(
        f"{base}/v1/messages",
        data=json.dumps(body).encode(),
        headers={**HEADERS, "content-type": "application/json"},
        method="POST",
    )
    reply = urllib.request.urlopen(request, timeout=10)  # noqa: S310 (loopback http, the test's own server)
    lines = (raw.decode().rstrip("\r\n") for raw in reply)
    return reply.status, reply.headers.get("content-type", ""), lines


@pytest.fixture(scope="module")
def claude(gateway) -> str:
    """The base URL of the sandbox's simulated cloud upstream (it speaks Anthropic's format too)."""
    found = [m.group(1) for line in gateway.stdout for m in [SIMULATED.search(line)] if m]
    assert found, "the sandbox banner names its simulated upstreams:\n" + "".join(gateway.stdout)
    return found[0]


def test_a_message_validates_as_the_official_type(claude: str) -> None:
    status, _, lines = post(claude, REQUEST)
    assert status == 200
    message = Message.model_validate(json.loads("".join(lines)))
    assert message.role == "assistant" and message.type == "message"
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


def test_every_streamed_event_validates_and_is_named_by_its_type(claude: str) -> None:
    events: List[Any] = []
    adapter = TypeAdapter(RawMessageStreamEvent)
    name = None
    status, content_type, lines = post(claude, {**REQUEST, "stream": True})
    assert status == 200
    assert content_type.startswith("text/event-stream")
    for line in lines:
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            data = json.loads(line[len("data: ") :])
            assert data["type"] == name, "the SSE event name is the data's type"
            if data["type"] != "ping":
                events.append(adapter.validate_python(data))
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_delta" in kinds and "message_delta" in kinds
    start = events[0]
    delta = next(e for e in events if e.type == "message_delta")
    assert start.message.usage.input_tokens > 0, "input tokens arrive in message_start"
    assert delta.usage.output_tokens > 0, "output tokens arrive in message_delta"


def test_the_official_client_reads_the_simulated_server(claude: str) -> None:
    client = anthropic.Anthropic(base_url=claude, api_key="sk-ant-unused", max_retries=0)
    message = client.messages.create(**REQUEST)
    assert isinstance(message, Message)
    text = "".join(block.text for block in message.content if block.type == "text")
    with client.messages.stream(**REQUEST) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == text
    assert final.usage.output_tokens == message.usage.output_tokens
    assert final.stop_reason == "end_turn"


def test_an_error_body_is_what_the_official_client_expects(start_gateway) -> None:
    failing = start_gateway("--fail-primary-every", "1")
    base = [m.group(1) for line in failing.stdout for m in [SIMULATED.search(line)] if m][0]
    client = anthropic.Anthropic(base_url=base, api_key="sk-ant-unused", max_retries=0)
    with pytest.raises(anthropic.InternalServerError) as caught:
        client.messages.create(**REQUEST)
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "api_error" and body["error"]["message"]
