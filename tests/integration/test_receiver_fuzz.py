"""Property at the edge (issue 9): hypothesis posts arbitrary bodies to a live receiver
(`bfus-lime receiver`, 2 gunicorn processes) on a real broker. Every answer is one of
202, 400, 413, 415 and 422; afterwards 100 ordinary messages in a row get 202 from
every process; and every 202 ends as one log record in Lime (processed or failed),
every 400 and 422 as one failed record.

`make test` runs a few hundred examples; `pytest tests/test_receiver_fuzz.py
--hypothesis-profile=long -s` runs thousands and prints the figures."""

from __future__ import annotations

import itertools
import json
import math
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import requests
from hypothesis import example, given
from hypothesis import strategies as st

from builders import message
from sandbox.stack import RECEIVER_KEY, Stack, wait_for
from shared.topology import Topology

ANSWERS = {202, 400, 413, 415, 422}
MAX_BODY = 16384


class Pairs(list):
    """A JSON object as a list of (name, value): names may repeat."""


def dumps(value: Any, ascii_only: bool) -> str:
    """JSON text of ``value``, as a sender without a careful encoder writes it: NaN
    and Infinity literals, repeated names, lone surrogates."""
    if isinstance(value, Pairs):
        return "{" + ", ".join(f"{dumps(k, ascii_only)}: {dumps(v, ascii_only)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(dumps(v, ascii_only) for v in value) + "]"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return json.dumps(value, ensure_ascii=ascii_only)


any_text = st.text(st.characters(exclude_categories=()), max_size=40)  # surrogates and controls included
fair_text = st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=40)
names = st.one_of(st.sampled_from(["id", "key", "data", "name", "customerno", "operation"]), fair_text, any_text)
scalars = st.one_of(
    st.none(), st.booleans(), fair_text, fair_text, any_text,
    st.integers(), st.integers(min_value=-(10**40), max_value=10**40), st.sampled_from([2**63 - 1, 2**63, 10**300]),
    st.floats(allow_nan=False, allow_infinity=False), st.floats(allow_nan=True, allow_infinity=True),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.lists(st.tuples(names, children), max_size=4).map(Pairs)),
    max_leaves=12,
)
fair_values = st.one_of(st.none(), st.booleans(), fair_text, st.integers(-(10**6), 10**6),
                        st.floats(allow_nan=False, allow_infinity=False))
objecttypes = st.one_of(st.sampled_from(["customer", "contract", "facility", "meter", "invoice"]),
                        st.from_regex(r"[a-z][a-z0-9_]{0,70}", fullmatch=True), any_text)
timestamps = st.one_of(st.just("2026-11-24T09:15:02.123+01:00"), st.datetimes().map(lambda d: d.isoformat()),
                       any_text, json_values)
bad_ids = st.one_of(st.integers(max_value=0), st.integers(min_value=2**63), st.floats(allow_nan=True),
                    st.booleans(), any_text, st.none(), json_values)
keys = st.one_of(st.from_regex(r"[0-9]{1,8}", fullmatch=True), any_text, json_values)


field_names = st.sampled_from(["customerno", "name", "firstname", "street", "zipcode", "city", "status", "email",
                                "contractno", "facilityno", "meterno", "einvoice", "startdate", "category"])
plausible = {
    "timestamp": st.sampled_from(["2026-11-24T09:15:02.123+01:00", "2026-01-01T00:00:00Z",
                                  "1999-12-31T23:59:59-05:00"]),
    "objecttype": st.sampled_from(["customer", "contract", "facility", "meter", "invoice"]),
    "operation": st.sampled_from(["created", "updated", "deleted"]),
    "key": st.from_regex(r"[0-9]{1,8}", fullmatch=True),
    "customerno": st.one_of(st.from_regex(r"[0-9]{1,8}", fullmatch=True), st.none()),
    "data": st.lists(st.tuples(field_names, st.one_of(fair_values, fair_values, fair_values, json_values)),
                     min_size=1, max_size=8).map(Pairs),
}
wild = {"timestamp": timestamps, "objecttype": objecttypes, "operation": st.one_of(any_text, json_values),
        "key": keys, "customerno": st.one_of(keys, st.none()),
        "data": st.one_of(json_values, st.lists(st.tuples(names, json_values), max_size=8).map(Pairs))}


@st.composite
def envelopes(draw: st.DrawFn) -> tuple[str, Pairs]:
    """An envelope-shaped object, each field mostly plausible, sometimes wild, missing,
    repeated or joined by others. ("valid-id", pairs) gets a fresh id when posted."""
    valid_id = draw(st.sampled_from([True] * 3 + [False]))
    fields = [("id", None if valid_id else draw(bad_ids))]
    for name in plausible:
        how = draw(st.sampled_from(["plausible"] * 17 + ["wild"] * 2 + ["missing"]))
        if how != "missing":
            fields.append((name, draw(plausible[name] if how == "plausible" else wild[name])))
    if draw(st.sampled_from([False] * 4 + [True])):
        fields.extend(draw(st.lists(st.tuples(names, json_values), min_size=1, max_size=3)))  # extra, repeated
    return ("valid-id" if valid_id else "wild", Pairs(draw(st.permutations(fields))))


@st.composite
def bodies(draw: st.DrawFn) -> tuple[str, Any, str]:
    """(kind, body, encoding)"""
    kind = draw(st.sampled_from(["envelope"] * 12 + ["json", "bytes", "deep", "cut"]))
    encoding = draw(st.sampled_from(["utf-8"] * 6 + ["ascii-escapes"] * 3 + ["utf-16", "latin-1"]))
    if kind == "envelope":
        mode, pairs = draw(envelopes())
        return mode, pairs, encoding
    if kind == "json":
        return "wild", draw(json_values), encoding
    if kind == "bytes":
        return "raw", draw(st.binary(max_size=300)), encoding
    if kind == "deep":
        depth = draw(st.integers(1, 20_000))
        return "raw", ("[" * depth + draw(st.sampled_from(["", "1", "]" * depth]))).encode(), encoding
    _mode, pairs = draw(envelopes())
    text = dumps(pairs, True)
    return "raw", text[: draw(st.integers(0, len(text)))].encode() + draw(st.binary(max_size=10)), encoding


content_types = st.sampled_from(
    ["application/json"] * 20 + ["application/json; charset=utf-8", "application/json;charset=UTF8", "APPLICATION/JSON",
                                 "application/json; charset=iso-8859-1", "text/plain",
                                 "application/x-www-form-urlencoded",
                                 "", "application/problem+json", "application/json; charset", "application/json;;=",
                                 "multipart/form-data; boundary=x",
                                 "application/json\u00e5".encode().decode("latin-1")])


def encode(text: str, encoding: str) -> bytes:
    if encoding == "ascii-escapes":
        return text.encode("utf-8", "surrogatepass")
    return text.encode(encoding, "surrogatepass" if encoding.startswith("utf") else "replace")


def test_any_body_is_answered_by_the_contract_and_ends_as_a_record(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(partitions=4, config={"receiver": {"max_body_bytes": MAX_BODY},
                                             "worker": {"lime_error_attempts": 3}})
    receiver = stack.spawn_receiver(processes=2, threads=2)
    stack.start_worker()
    url = f"{stack.receiver_url}bfus/messages"
    fresh_ids = itertools.count(7_000_000_000_001)
    answers: Counter[int] = Counter()
    accepted: set[int] = set()
    session = requests.Session()

    known = Pairs([("id", None), ("timestamp", "2026-11-24T09:15:02+01:00"), ("objecttype", "customer"),
                   ("operation", "updated"), ("key", "1"), ("customerno", "1")])

    @given(body=bodies(), content_type=content_types)
    # The bodies of issue 9, whatever the random search finds besides.
    @example(body=("wild", Pairs([("id", 10**40), *known[1:], ("data", Pairs([("name", "A")]))]), "utf-8"),
             content_type="application/json")
    @example(body=("raw", b"[" * 60_000, "utf-8"), content_type="application/json")
    @example(body=("valid-id", Pairs([*known, ("data", Pairs([("zipcode", math.nan)]))]), "utf-8"),
             content_type="application/json")
    @example(body=("valid-id", Pairs([*known, ("data", Pairs([("name", "\ud800")]))]), "ascii-escapes"),
             content_type="application/json")
    @example(body=("raw", b'{"id": 8006, "id": 8007, "timestamp": "2026-11-24T09:15:02+01:00", "objecttype": '
                          b'"customer", "operation": "updated", "key": "1", "data": {"name": "A"}}', "utf-8"),
             content_type="application/json")
    def post_one(body: tuple[str, Any, str], content_type: str) -> None:
        mode, value, encoding = body
        if mode == "valid-id":
            value = Pairs(("id", next(fresh_ids)) if name == "id" else (name, v) for name, v in value)
        data = value if mode == "raw" else encode(dumps(value, encoding == "ascii-escapes"), encoding)
        response = session.post(url, data=data, timeout=30,
                                headers={"Content-Type": content_type, "X-API-Key": RECEIVER_KEY})
        assert response.status_code in ANSWERS, (response.status_code, response.text[:300], data[:300])
        answers[response.status_code] += 1
        if response.status_code == 413 and len(data) > 4 * MAX_BODY:
            return  # the server refused it unread, in plain text (docs/contracts.md)
        answer = response.json()
        if response.status_code == 202:
            accepted.add(answer["id"])
        else:
            assert answer["error"] and answer["message"], answer

    post_one()
    print(f"\nanswers: {dict(sorted(answers.items()))}; distinct ids accepted: {len(accepted)}")

    # Afterwards: 100 ordinary messages in a row, each on a new connection, all 202, and
    # both processes among those that answered.
    ordinary = list(range(9_000_000_000_001, 9_000_000_000_101))
    for mid in ordinary:
        response = requests.post(url, json=message(mid, customerno=str(mid % 50)), timeout=10,
                                 headers={"X-API-Key": RECEIVER_KEY})
        assert response.status_code == 202, response.text
    pids = {pid for pid, mid in re.findall(r"event='message_queued' pid=(\d+) .*?message_id=(\d+)",
                                           receiver.log_text()) if int(mid) in ordinary}
    assert len(pids) == 2, f"answered by processes {pids}"

    expected = len(accepted) + answers[400] + answers[422] + len(ordinary)
    stack.wait_logged(expected, 300)
    topology = Topology.from_config(stack.config.broker)
    wait_for(lambda: all(stack.workers[0].worker._lanes[q].idle for q in stack.workers[0].worker._lanes), 60,
             "the worker to settle everything")
    processed, failed = stack.log_records()
    by_reason = Counter(r["reason"] for r in failed)
    print(f"log records: {len(processed)} processed, {len(failed)} failed {dict(by_reason)}")
    assert len(processed) + len(failed) == expected
    assert by_reason["invalid_json"] == answers[400] and by_reason["invalid_envelope"] == answers[422]
    logged_ids = {r["messageid"] for r in processed} | {r["messageid"] for r in failed
                                                         if r["reason"] not in ("invalid_json", "invalid_envelope")}
    assert logged_ids == accepted | set(ordinary)
    assert topology.partitions == 4
