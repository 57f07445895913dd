"""Schema fuzzing (issue 16): schemathesis generates requests from the receiver's own
OpenAPI description (as the live receiver serves it at ``/openapi.json``) and sends
them over real HTTP to ``bfus-lime receiver`` (2 gunicorn processes) on a real
RabbitMQ, with Lime's webhooks, the jump and the admin pages on.

- With the credentials (X-API-Key; Lime's v1 or v2 signature over each generated body;
  the admin's basic auth): for every operation schemathesis's coverage cases
  (boundaries, wrong types, missing parameters, undeclared methods, malformed content
  types), then its fuzzing, positive and negative, then bodies over the size limit.
  Every answer goes through schemathesis's checks: no 5xx but a documented 503;
  status, content type, headers and body as described; schema-valid requests accepted,
  invalid ones refused; the credentials enforced (its probes without them included).
  Now and then an accepted v2 delivery is sent again: 200 ``duplicate``.
- Without the credentials, and with wrong ones: every answer 401.
- Afterwards, in RabbitMQ: every 202 of /bfus/messages is one message in the partition
  queues (the same ids, as many times), every 202 of /lime/events one (the same
  delivery), every 400/422 one message kept for the failed-message log
  (docs/contracts.md), and nothing else: 401, 405, 413, 415 and a replay's 200 keep
  nothing.

`pytest -s` prints the figures. About 30 s on a 2-CPU machine. The cases are the same
on every run (derandomized, as CI wants); FUZZ_SCALE=10 in the environment generates
ten times as many, new ones each run."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.generation.drivers import CoverageGenerator
from schemathesis.generation.feedback import NO_FEEDBACK
from schemathesis.generation.overrides import Override
from schemathesis.specs.openapi.adapter.parameters import ParameterLocation

from builders import take_all
from receiver.openapi import document
from sandbox.stack import RECEIVER_KEY, Stack
from shared import headers as h
from shared.logrecords import TO_BFUS
from shared.topology import Topology

LIME_SECRET = "fuzz-lime-webhook-secret"
ADMIN = ("ops", "fuzz-admin-password")
MAX_BODY = 65536
BFUS, LIME = "POST /bfus/messages", "POST /lime/events"
# Generated examples per operation and mode (hypothesis stops sooner when an operation
# has fewer distinct inputs, e.g. GET /healthz has one).
SCALE = float(os.environ.get("FUZZ_SCALE") or 1)
EXAMPLES = {BFUS: 330, LIME: 170, "GET /jump/{limetype}/{object_id}": 40}
DEFAULT_EXAMPLES = 12
UNAUTHENTICATED_EXAMPLES = {BFUS: 40, LIME: 40}  # per run without / with wrong credentials; admin pages 8
MIN_REQUESTS = 1000
CONFIG = """
[checks]
not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]
"""
REPLAY_EVERY = 20  # accepted v2 deliveries


class Recorder:
    """Every answer the session got (the probes schemathesis's checks send included),
    with the run and the operation being fuzzed."""

    def __init__(self) -> None:
        self.session = requests.Session()
        self.session.hooks["response"].append(self._note)
        self.run = "-"
        self.operation = "-"
        self.answers: list[tuple[str, str, str, str, int, bytes]] = []  # run, operation, method, path, status, body

    def _note(self, response: requests.Response, *_: Any, **__: Any) -> None:
        request = response.request
        self.answers.append((self.run, self.operation, request.method or "", urlsplit(request.url or "").path,
                             response.status_code, response.content))

    def sent(self, run: str) -> int:
        return sum(1 for answer in self.answers if answer[0] == run)

    def posts(self, path: str) -> list[tuple[int, bytes]]:
        """(status, body) of every POST to ``path``, whichever run or operation sent it."""
        return [(status, body) for _r, _o, method, where, status, body in self.answers
                if method == "POST" and where == path]


def sign_v1(body: bytes) -> dict[str, str]:
    return {"X-Lime-Signature": "sha256=" + hmac.new(LIME_SECRET.encode(), body, hashlib.sha256).hexdigest()}


def sign_v2(body: bytes, delivery: str, stamp: str) -> dict[str, str]:
    signed = f"v2:{delivery}:{stamp}:{hashlib.sha256(body).hexdigest()}".encode()
    return {"X-Lime-Signature": "v2=" + hmac.new(LIME_SECRET.encode(), signed, hashlib.sha256).hexdigest(),
            "X-Lime-Delivery-Id": delivery, "X-Lime-Delivery-Timestamp": stamp}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def body_bytes(case: Case, base_url: str) -> bytes:
    """The body exactly as the transport sends it (what Lime's signature covers)."""
    sent = case.as_transport_kwargs(base_url=base_url)
    prepared = requests.Request(method=sent["method"], url=sent["url"], json=sent.get("json"),
                                data=sent.get("data")).prepare()
    body = prepared.body or b""
    return body.encode() if isinstance(body, str) else body


def header_negated(case: Case) -> bool:
    return case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER)


def is_admin(case: Case) -> bool:
    return case.operation.path.startswith("/admin/")


class Fuzzer:
    def __init__(self, base_url: str, recorder: Recorder):
        self.base_url = base_url
        self.recorder = recorder
        self.signed = Counter[str]()
        self.accepted_v2 = 0
        self.replays = 0

    def credentials(self, case: Case, how: str) -> dict[str, str]:
        """Headers that authenticate ``case`` (``how``: right, none or wrong). With the
        right ones, a credential the case left out, or made invalid on purpose
        (negative mode), stays as generated: those cases test the refusal."""
        headers = case.headers if case.headers is not None else {}
        if case.operation.label == LIME:
            return self._signature(case, headers, how)
        name = "X-API-Key" if case.operation.label == BFUS else "Authorization" if is_admin(case) else None
        if name is None:
            return {}
        if how == "none":
            headers.pop(name, None)
            return {}
        if how == "right" and (name not in headers or header_negated(case)):
            return {}
        if name == "X-API-Key":
            return {name: RECEIVER_KEY if how == "right" else f"wrong-{RECEIVER_KEY}"}
        return {name: basic(ADMIN[0], ADMIN[1] if how == "right" else "wrong")}

    def _signature(self, case: Case, headers: Any, how: str) -> dict[str, str]:
        if how == "none":
            for name in ("X-Lime-Signature", "X-Lime-Delivery-Id", "X-Lime-Delivery-Timestamp"):
                headers.pop(name, None)
            return {}
        if how == "right" and "X-Lime-Signature" not in headers:
            return {}
        body = body_bytes(case, self.base_url)
        if how == "wrong":
            body += b" "  # a signature over another body
        if how == "right" and header_negated(case):  # the delivery headers as generated (v2 refuses bad ones)
            self.signed["v2, generated id and time"] += 1
            return sign_v2(body, headers.get("X-Lime-Delivery-Id", ""), headers.get("X-Lime-Delivery-Timestamp", ""))
        if sum(self.signed.values()) % 2:
            for name in ("X-Lime-Delivery-Id", "X-Lime-Delivery-Timestamp"):
                headers.pop(name, None)
            self.signed["v1"] += 1
            return sign_v1(body)
        self.signed["v2"] += 1
        return sign_v2(body, f"fuzz-{uuid.uuid4()}", str(int(time.time())))

    @staticmethod
    def consistent_event(case: Case) -> None:
        """``body.limetype`` equal to the limetype ``event`` names: a rule across two
        fields that JSON Schema cannot state (the document says it in words)."""
        body = case.body
        if isinstance(body, dict) and isinstance(body.get("event"), str) and isinstance(body.get("body"), dict):
            if "limetype" in body["body"] and "." in body["event"]:
                body["body"]["limetype"] = body["event"].split(".", 1)[0]

    def send(self, case: Case, how: str) -> None:
        negative = case.meta is not None and case.meta.generation.mode.is_negative
        if case.operation.label == LIME and not negative:
            self.consistent_event(case)
        extra = self.credentials(case, how)
        response = case.call_and_validate(base_url=self.base_url, session=self.recorder.session, headers=extra)
        if how != "right":
            assert response.status_code == 401, (how, case.operation.label, response.status_code, response.content)
        elif extra.get("X-Lime-Delivery-Id") and response.status_code == 202:
            self.accepted_v2 += 1
            if self.accepted_v2 % REPLAY_EVERY == 0:  # Lime sends it again: a duplicate, queued once
                again = case.call_and_validate(base_url=self.base_url, session=self.recorder.session, headers=extra)
                assert again.status_code == 200 and again.json()["status"] == "duplicate", again.content
                self.replays += 1


def coverage_cases(operation: Any) -> list[Case]:
    generator = CoverageGenerator(
        operation=operation, generation_modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        generation_config=operation.schema.config.generation_for(operation=operation, phase="coverage"),
        auth_storage=None, override=Override(), feedback=NO_FEEDBACK)
    return list(generator)


def fuzz(operation: Any, mode: GenerationMode, examples: int, send: Callable[[Case], None]) -> None:
    """Hypothesis sends up to ``examples`` generated cases (it shrinks a failing one)."""

    # derandomize: make test sends the same cases on every run and machine (a CI failure
    # is reproduced by running it again); FUZZ_SCALE above 1 explores new ones.
    @settings(max_examples=max(1, round(examples * SCALE)), deadline=None, database=None, derandomize=SCALE <= 1,
              phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def one(case: Case) -> None:
        send(case)

    one()


def can_negate(operation: Any) -> bool:
    """Whether schemathesis can make the operation's inputs invalid (not when it has
    none, nor for a path parameter that may be any text)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            operation.as_strategy(generation_mode=GenerationMode.NEGATIVE).example()
    except Unsatisfiable:
        return False
    return True


def big_body(label: str, size: int) -> dict[str, Any]:
    if label == BFUS:
        return {"id": 1, "timestamp": "2026-11-24T09:15:02+01:00", "objecttype": "customer", "operation": "updated",
                "key": "1", "data": {"name": "x" * size}}
    return {"event": "company.update", "body": {"id": 1, "limetype": "company", "values": {"name": "x" * size}}}


def oversized(operation: Any) -> list[Case]:
    """Bodies over receiver.max_body_bytes (413 from the application, JSON) and over 4
    times that (413 from the HTTP server, plain text): generated ones are never so big."""
    if operation.label not in (BFUS, LIME):
        return []
    credential = "X-API-Key" if operation.label == BFUS else "X-Lime-Signature"
    return [operation.Case(body=big_body(operation.label, size), headers={credential: "-"},
                           media_type="application/json") for size in (MAX_BODY + 1, 4 * MAX_BODY + 1)]


@pytest.fixture
def stack(make_stack: Callable[..., Stack], tmp_path: Path) -> Iterator[Stack]:
    stack = make_stack(partitions=4, jump=True, config={
        "receiver": {"max_body_bytes": MAX_BODY, "lime_secret": LIME_SECRET,
                     "deliveries_db": str(tmp_path / "deliveries.sqlite")},
        "admin": {"user": ADMIN[0], "password": ADMIN[1]},
    })
    stack.spawn_receiver(processes=2, threads=2)
    yield stack


def test_the_receiver_answers_what_its_openapi_description_says(stack: Stack) -> None:
    started = time.monotonic()
    base_url = stack.receiver_url.rstrip("/")
    served = requests.get(f"{base_url}/openapi.json", timeout=10)
    assert served.status_code == 200 and served.json() == document()
    # from_dict: from_url would leave out the operation the document came from
    schema = schemathesis.openapi.from_dict(served.json(), config=schemathesis.Config.from_str(CONFIG))
    schema.config.update(base_url=base_url, request_timeout=30)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} == {f"{method.upper()} {path}" for path, item in document()["paths"].items()
                                               for method in item}
    recorder = Recorder()
    fuzzer = Fuzzer(base_url, recorder)

    recorder.run = "right"
    for operation in operations:
        recorder.operation = operation.label
        for case in coverage_cases(operation):
            fuzzer.send(case, "right")
        examples = EXAMPLES.get(operation.label, DEFAULT_EXAMPLES)
        fuzz(operation, GenerationMode.POSITIVE, examples, lambda case: fuzzer.send(case, "right"))
        if can_negate(operation):
            fuzz(operation, GenerationMode.NEGATIVE, max(examples // 2, DEFAULT_EXAMPLES),
                 lambda case: fuzzer.send(case, "right"))
        for case in oversized(operation):
            fuzzer.send(case, "right")

    for how in ("none", "wrong"):
        recorder.run = how
        for operation in operations:
            if operation.label in (BFUS, LIME) or operation.path.startswith("/admin/"):
                recorder.operation = operation.label
                fuzz(operation, GenerationMode.POSITIVE, UNAUTHENTICATED_EXAMPLES.get(operation.label, 8),
                     lambda case, how=how: fuzzer.send(case, how))
    fuzzing = time.monotonic() - started

    # What RabbitMQ holds.
    topology = Topology.from_config(stack.config.broker)
    queued = [props for queue in topology.partition_queues for props, _body in take_all(stack, queue)]
    kept = [props for props, _body in take_all(stack, topology.invalid_queue)]
    from_lime = [props for props in queued if (props.headers or {}).get(h.DIRECTION) == TO_BFUS]
    from_bfus = [props for props in queued if (props.headers or {}).get(h.DIRECTION) != TO_BFUS]
    kept_bfus = Counter(props.headers[h.STATUS] for props in kept if props.headers.get(h.DIRECTION) != TO_BFUS)
    kept_lime = Counter(props.headers[h.STATUS] for props in kept if props.headers.get(h.DIRECTION) == TO_BFUS)

    # What the receiver answered.
    bfus, lime = recorder.posts("/bfus/messages"), recorder.posts("/lime/events")
    bfus_statuses, lime_statuses = Counter(s for s, _b in bfus), Counter(s for s, _b in lime)
    statuses = Counter(answer[4] for answer in recorder.answers)
    by_operation: dict[str, Counter[int]] = {}
    for _run, operation_label, *_rest, status, _body in recorder.answers:
        by_operation.setdefault(operation_label, Counter())[status] += 1

    print(f"\nschemathesis: {len(recorder.answers)} requests in {fuzzing:.0f} s: with the credentials "
          f"{recorder.sent('right')}, without {recorder.sent('none')}, with wrong ones {recorder.sent('wrong')}; "
          f"statuses {dict(sorted(statuses.items()))}")
    for label, seen in by_operation.items():
        print(f"  {label}: {sum(seen.values())} {dict(sorted(seen.items()))}")
    print(f"  Lime signatures {dict(fuzzer.signed)}, accepted v2 deliveries sent again {fuzzer.replays}")
    print(f"RabbitMQ: partitions {len(from_bfus)} BFUS messages + {len(from_lime)} Lime events; kept for the "
          f"failed-message log: BFUS {dict(sorted(kept_bfus.items()))}, Lime {dict(sorted(kept_lime.items()))}")

    assert len(recorder.answers) >= MIN_REQUESTS
    assert recorder.sent("none") >= 80 and recorder.sent("wrong") >= 80
    assert all(status < 500 or status == 503 for status in statuses)
    assert bfus_statuses[202] >= 100 and lime_statuses[202] >= 30 and fuzzer.replays >= 1
    assert bfus_statuses[413] >= 2 and lime_statuses[413] >= 2
    assert Counter(int(p.message_id) for p in from_bfus) == Counter(
        json.loads(body)["id"] for status, body in bfus if status == 202)
    assert Counter(p.message_id for p in from_lime) == Counter(
        json.loads(body)["delivery"] for status, body in lime if status == 202)
    assert kept_bfus == Counter({s: bfus_statuses[s] for s in (400, 422) if bfus_statuses[s]})
    assert kept_lime == Counter({400: lime_statuses[400]} if lime_statuses[400] else {})
