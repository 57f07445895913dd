"""Migration from the BFUS stand-in into the Lime stand-in: empty and pre-filled Lime,
filters, dry run, resume after a kill, live changes alongside, retries of failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from migration.report import Report
from migration.run import Migration, MigrationOptions
from sandbox.check import CheckReport, check_objects
from sandbox.lime.app import LimeSandboxSettings, LimeStandIn
from sandbox.stack import BFUS_LIME, Stack, config_environment, wait_for
from shared.bfus import BfusClient
from shared.config import build_config, deep_merge
from shared.jumplinks import JumpLinks
from shared.lime import LimeClient
from shared.limemeta import check_against_lime, fetch_limetypes

TYPES = ("customer", "facility", "contract", "meter")


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    stack = make_stack(partitions=4).start(workers=0)
    stack.raw = deep_merge(stack.raw, {"bfus": {"url": stack.bfus.url, "token": "dev-bfus-token"}})
    stack.config = build_config(stack.raw, environ={})
    return stack


def migrate(stack: Stack, tmp_path: Path, lime: LimeStandIn | None = None, **options: Any) -> Report:
    config = stack.config
    if lime is not None:
        config = build_config(deep_merge(stack.raw, {"lime": {"url": lime.api_url}}), environ={})
    client = LimeClient(config.lime)
    mappers = check_against_lime(config, fetch_limetypes(client, wait=30))
    options.setdefault("checkpoint", tmp_path / "checkpoint.jsonl")
    options.setdefault("report", tmp_path / "report.json")
    return Migration(config.broker, config.worker, MigrationOptions(**options), client, BfusClient(config.bfus),
                     mappers, links=JumpLinks(config.jump, config.receiver.public_url)).run()


def check_all(stack: Stack, lime: LimeStandIn | None = None, keys: dict[str, set[str]] | None = None) -> CheckReport:
    lime = lime or stack.lime
    mappers = check_against_lime(stack.config, LimeClient(stack.config.lime).limetypes())
    report = CheckReport()
    lime_by_id = {o["_id"]: o for m in mappers.values() for o in lime.store.all_objects(m.limetype)}
    for objecttype in TYPES:
        mapper = mappers[objecttype]
        check_objects(report, mapper, stack.bfus.store.snapshots(objecttype), lime.store.all_objects(mapper.limetype),
                      None if keys is None else keys.get(objecttype, set()), mappers, lime_by_id)
    return report


def migrated(objecttype: str, outcome: str) -> float:
    """bfuslime_migration_objects_total as `bfus-lime migrate --metrics-port` serves it."""
    return REGISTRY.get_sample_value("bfuslime_migration_objects_total",
                                     {"objecttype": objecttype, "outcome": outcome}) or 0.0


def lime_writes(lime: LimeStandIn) -> int:
    requests = lime.faults.stats()["requests"]
    return sum(n for k, n in requests.items() if k.startswith(("POST", "PUT")))


def test_empty_lime_is_filled_at_about_one_call_per_object(stack: Stack, tmp_path: Path) -> None:
    stack.bfus.changes.seed_customers(500)
    stack.lime.faults.reset_stats()
    before = {t: migrated(t, "created") for t in TYPES}
    report = migrate(stack, tmp_path)
    assert not report.failures
    assert {t: migrated(t, "created") - before[t] for t in TYPES} == {t: report.counts[t]["created"] for t in TYPES}
    objects = report.objects
    assert objects == sum(len(stack.bfus.store.snapshots(t)) for t in TYPES) > 1500
    assert {t: dict(c) for t, c in report.counts.items()} == {
        t: {"created": len(stack.bfus.store.snapshots(t))} for t in TYPES}
    calls = stack.lime.faults.stats()["total"]
    assert calls == report.lime_calls + 1  # + the metadata read before the migration
    assert report.lime_calls / objects <= 1.02
    result = check_all(stack)
    assert result.ok, result.details()


def test_prefilled_lime_is_overwritten_and_foreign_companies_stay_untouched(stack: Stack, tmp_path: Path) -> None:
    stack.bfus.changes.seed_customers(600)
    customers = [s["data"] for s in stack.bfus.store.snapshots("customer")]
    mappers = check_against_lime(stack.config, LimeClient(stack.config.lime).limetypes())
    prefilled = customers[: len(customers) * 3 // 10]
    for i, customer in enumerate(prefilled):
        values = mappers["customer"].map(customer)
        if i % 3 == 0:
            values.update(name="Gammalt Namn AB", phone="+46800000000")  # stale in Lime
        stack.lime.store.create("company", values)
    foreign = [stack.lime.store.create("company", {"name": f"Lime-only {i}",
                                                   "customerno": f"L-{i}"}) for i in range(20)]
    foreign.append(stack.lime.store.create("company", {"name": "No number AB"}))
    stack.lime.faults.reset_stats()
    report = migrate(stack, tmp_path, objecttypes=("customer",))
    counts = report.counts["customer"]
    assert counts["updated"] == len(prefilled[::3])
    assert counts["unchanged"] == len(prefilled) - len(prefilled[::3])
    assert counts["created"] == len(customers) - len(prefilled)
    result = check_all(stack, keys={"customer": {c["customerno"] for c in customers}})
    assert result.ok, result.details()
    for before in foreign:
        after = stack.lime.store.get("company", before["_id"])
        assert after == before  # not even the timestamp moved
    index_pages = -(-(len(prefilled) + len(foreign)) // 50)  # the stand-in's largest page is 50
    assert report.lime_calls <= 1.05 * (counts["created"] + counts["updated"] + counts["unchanged"]) + index_pages
    assert lime_writes(stack.lime) == counts["created"] + counts["updated"]


def test_only_customers_with_an_active_contract(stack: Stack, tmp_path: Path) -> None:
    stack.bfus.changes.seed_customers(120)
    ended = set()
    for snapshot in stack.bfus.store.snapshots("contract")[::2]:
        contract = {**snapshot["data"], "status": "ended", "enddate": "2026-01-31"}
        stack.bfus.store.put_silently("contract", snapshot["key"], snapshot["customerno"], contract)
        ended.add(snapshot["key"])
    active_customers = {s["customerno"] for s in stack.bfus.store.snapshots("contract") if s["key"] not in ended}
    assert 0 < len(active_customers) < 120
    report = migrate(stack, tmp_path, only_active_contract=True)
    assert not report.failures
    companies = {c["customerno"] for c in stack.lime_objects("company")}
    assert companies == active_customers
    for limetype in ("agreement", "facility", "meter"):
        for obj in stack.lime_objects(limetype):
            company_id = obj.get("company")
            if company_id is not None:
                assert stack.lime.store.get("company", company_id)["customerno"] in active_customers
    assert {a["contractno"] for a in stack.lime_objects("agreement")} == {
        s["key"] for s in stack.bfus.store.snapshots("contract") if s["customerno"] in active_customers}


def test_category_and_limit_filters(stack: Stack, tmp_path: Path) -> None:
    stack.bfus.changes.seed_customers(200)
    report = migrate(stack, tmp_path, objecttypes=("customer",), customer_category="business", limit=10, dry_run=True)
    business = [s for s in stack.bfus.store.snapshots("customer") if s["data"]["category"] == "business"]
    assert report.counts["customer"]["created"] == min(10, len(business)) > 0


def test_dry_run_counts_and_writes_nothing(stack: Stack, tmp_path: Path) -> None:
    stack.bfus.changes.seed_customers(100)
    mappers = check_against_lime(stack.config, LimeClient(stack.config.lime).limetypes())
    first = stack.bfus.store.snapshots("customer")[0]["data"]
    stack.lime.store.create("company", mappers["customer"].map(first))
    stack.bfus.store.put_silently("customer", "100050", "100050",
                                  {**stack.bfus.store.get("customer", "100050")["data"], "status": "bankrupt"})
    stack.lime.faults.reset_stats()
    report = migrate(stack, tmp_path, dry_run=True)
    assert lime_writes(stack.lime) == 0
    assert stack.lime.store.count("company") == 1
    assert report.counts["customer"]["unchanged"] == 1
    assert report.counts["customer"]["failed"] == 1
    assert report.counts["customer"]["created"] == 98
    reasons = {(f["objecttype"], f["key"]): f["reason"] for f in report.failures}
    assert reasons[("customer", "100050")] == "mapping_error"
    orphans = {s["key"] for s in stack.bfus.store.snapshots("contract") if s["customerno"] == "100050"}
    assert orphans and all(reasons[("contract", key)] == "missing_related" for key in orphans)
    assert report.counts["contract"]["created"] == len(stack.bfus.store.snapshots("contract")) - len(orphans)
    assert not (tmp_path / "checkpoint.jsonl").exists()


def test_failures_do_not_stop_it_and_can_be_retried(stack: Stack, tmp_path: Path) -> None:
    stack.bfus.changes.seed_customers(40)
    broken = stack.bfus.store.get("customer", "100007")["data"]
    stack.bfus.store.put_silently("customer", "100007", "100007", {**broken, "status": "bankrupt"})
    report = migrate(stack, tmp_path, objecttypes=("customer",))
    assert report.counts["customer"] == {"created": 39, "failed": 1}
    assert report.failures[0]["reason"] == "mapping_error" and "bankrupt" in report.failures[0]["error"]
    again = migrate(stack, tmp_path, objecttypes=("customer",))  # resumed: nothing left, the failure listed
    assert again.objects == 0 and again.resumed == 40 and len(again.failures) == 1
    stack.bfus.store.put_silently("customer", "100007", "100007", {**broken, "status": "active"})
    stack.lime.faults.reset_stats()
    retried = migrate(stack, tmp_path, objecttypes=("customer",), retry_failed=True)
    assert retried.counts["customer"] == {"created": 1} and not retried.failures
    assert lime_writes(stack.lime) == 1
    assert stack.lime.store.count("company") == 40


def _migrate_command(stack: Stack, tmp_path: Path) -> subprocess.Popen:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ", "BFUSLIME"))},
           **config_environment(stack.raw)}
    return subprocess.Popen(
        [*BFUS_LIME, "migrate", "--parallel", "2", "--checkpoint", str(tmp_path / "cp.jsonl"),
         "--report", str(tmp_path / "report.json")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _normalized(lime: LimeStandIn) -> dict[str, dict[str, Any]]:
    """Lime's data without ids and times, relations by key: comparable across two Limes."""
    keys = {"company": "customerno", "agreement": "contractno", "facility": "facilityno", "meter": "meterno"}
    by_id = {o["_id"]: (lt, o[key]) for lt, key in keys.items() for o in lime.store.all_objects(lt)}
    out = {}
    for limetype, key in keys.items():
        for obj in lime.store.all_objects(limetype):
            plain = {p: (by_id.get(v) if p in ("company", "facility") else v)
                     for p, v in obj.items() if not p.startswith("_")}
            out[f"{limetype}:{obj[key]}"] = plain
    return out


def test_killed_migration_resumes_to_the_same_end_writing_nothing_twice(stack: Stack, tmp_path: Path) -> None:
    stack.bfus.changes.seed_customers(400)
    stack.lime.faults.configure({"latency_ms": 5})
    stack.lime.faults.reset_stats()
    total = sum(len(stack.bfus.store.snapshots(t)) for t in TYPES)
    first = _migrate_command(stack, tmp_path)
    wait_for(lambda: stack.lime.faults.stats()["objects_written"] >= total // 2, 120, "half of the objects")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    assert stack.lime.faults.stats()["objects_written"] < total
    second = _migrate_command(stack, tmp_path)
    output, _ = second.communicate(timeout=300)
    assert second.returncode == 0, output
    assert "already done before this run" in output
    stats = stack.lime.faults.stats()
    assert stats["objects_written"] == total and stats["most_writes_of_one_object"] == 1
    reference = LimeStandIn(LimeSandboxSettings(db_path=tmp_path / "reference.db")).start()
    try:
        assert not migrate(stack, tmp_path / "ref", lime=reference, coordinate=False).failures
        assert _normalized(stack.lime) == _normalized(reference)
    finally:
        reference.close()
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["already_done_before_this_run"] > 0 and saved["failures"] == []


def test_interrupted_with_ctrl_c_stops_cleanly_and_continues(stack: Stack, tmp_path: Path) -> None:
    stack.bfus.changes.seed_customers(200)
    stack.lime.faults.configure({"latency_ms": 10})
    first = _migrate_command(stack, tmp_path)
    wait_for(lambda: stack.lime.store.count("company") >= 20, 60, "the migration under way")
    first.send_signal(signal.SIGINT)
    output, _ = first.communicate(timeout=60)
    assert first.returncode == 130, output
    assert "run the same command again to continue" in output
    second = _migrate_command(stack, tmp_path)
    output, _ = second.communicate(timeout=300)
    assert second.returncode == 0, output
    assert stack.lime.faults.stats()["most_writes_of_one_object"] == 1
    result = check_all(stack)
    assert result.ok, result.details()


def test_live_changes_during_a_migration_end_in_the_newest_state(make_stack: Callable[..., Stack],
                                                                 tmp_path: Path) -> None:
    stack = make_stack(partitions=4, lime_settings={"faults": _latency(3)}).start(workers=2)
    stack.raw = deep_merge(stack.raw, {"bfus": {"url": stack.bfus.url, "token": "dev-bfus-token"}})
    stack.config = build_config(stack.raw, environ={})
    stack.bfus.changes.seed_customers(300)
    done: list[Report] = []
    migration = threading.Thread(target=lambda: done.append(migrate(stack, tmp_path, parallel=4)))
    migration.start()
    # Once the migration holds the partitions, BFUS changes its customers while it runs.
    wait_for(lambda: set(stack.owners().values()) == {"migration"}, 60, "the migration to hold the partitions")
    live = stack.bfus.feed(400, customers=300, rate=100, objecttypes=TYPES)
    migration.join(300)
    live.join(120)
    stack.wait_delivered(60)
    stack.wait_logged(400, 120)
    assert done and not done[0].failures
    result = check_all(stack)
    assert result.ok, result.details()
    assert stack.log_records()[1] == []


def _latency(ms: float) -> Any:
    from sandbox.lime.faults import Faults

    return Faults(latency_ms=ms)


def test_lime_errors_and_rate_limits_are_waited_out(stack: Stack, tmp_path: Path) -> None:
    stack.bfus.changes.seed_customers(60)
    stack.lime.faults.configure({"error_rate": 0.1, "rate_limit": 40, "rate_window": 1.0})
    stack.lime.faults.reset_stats()
    report = migrate(stack, tmp_path)
    answers = stack.lime.faults.stats()["answers"]
    stack.lime.faults.configure({"error_rate": 0, "rate_limit": 0})
    assert answers.get("500", 0) > 0 and answers.get("429", 0) > 0
    assert not report.failures and not report.stopped
    assert stack.lime.faults.stats()["most_writes_of_one_object"] == 1
    result = check_all(stack)
    assert result.ok, result.details()


def test_reports_carry_options_and_totals_and_a_dry_run_keeps_its_own(make_stack: Callable[..., Stack],
                                                                       tmp_path: Path) -> None:
    """The command line's files: a resumed run's report counts the earlier run too; a dry
    run does not overwrite the real report; other options name the flags."""
    stack = make_stack(partitions=2).start(workers=0)
    stack.bfus.changes.seed_customers(12)
    raw = deep_merge(stack.raw, {"bfus": {"url": stack.bfus.url, "token": "dev-bfus-token"}})
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BFUSLIME_")}, **config_environment(raw)}

    def migrate_cmd(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*BFUS_LIME, "migrate", "--no-broker", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)

    first = migrate_cmd("--objecttypes", "customer", "--limit", "5")
    assert first.returncode == 0, first.stderr
    folder = tmp_path / "bfus-lime-migration"
    assert (folder / "checkpoint.jsonl").exists() and (folder / "report.json").exists()
    other = migrate_cmd("--objecttypes", "customer", "--limit", "8")
    assert other.returncode == 2
    assert ("run with --objecttypes customer --limit 5, not --objecttypes customer --limit 8" in other.stderr)
    dry = migrate_cmd("--objecttypes", "customer", "--limit", "5", "--dry-run")
    assert dry.returncode == 0 and (folder / "report.dry-run.json").exists()
    real = json.loads((folder / "report.json").read_text())
    assert real["dry_run"] is False and real["options"] == "--objecttypes customer --limit 5"
    assert real["totals_with_earlier_runs"]["customer"]["created"] == 5
    nothing = migrate_cmd("--objecttypes", "customer", "--customer-category", "no-such-category", "--fresh",
                          "--checkpoint", str(tmp_path / "other.jsonl"))
    assert nothing.returncode == 0 and "Nothing to migrate: BFUS has no objects matching" in nothing.stderr


def test_with_jump_links_every_object_gets_its_link_through_lime_errors(make_stack: Callable[..., Stack],
                                                                        tmp_path: Path) -> None:
    """A create and its link are two calls, each retried on its own: a 500 on the link
    never makes the object twice, and every object ends with its link."""
    stack = make_stack(partitions=4, jump=True).start(workers=0)
    stack.bfus.changes.seed_customers(60)
    stack.lime.faults.configure({"error_rate": 0.1})
    report = migrate(stack, tmp_path)
    answers = stack.lime.faults.stats()["answers"]
    stack.lime.faults.configure({"error_rate": 0})
    assert answers.get("500", 0) > 0 and not report.failures
    assert stack.lime.faults.stats()["most_writes_of_one_object"] == 2  # the create, then the link
    result = check_all(stack)
    assert result.ok, result.details()
    assert stack.outdated_jump_links() == [] and all(stack.lime_objects(lt) for lt in stack.config.jump.links)


def test_a_migration_after_the_jump_secret_changed_rewrites_only_the_links(make_stack: Callable[..., Stack],
                                                                           tmp_path: Path) -> None:
    stack = make_stack(partitions=2, jump=True).start(workers=0)
    stack.bfus.changes.seed_customers(30)
    first = migrate(stack, tmp_path)
    objects = first.objects
    assert first.lime_calls <= 2 * objects + 8  # a create and its link per object, plus index pages
    stack.config = build_config(deep_merge(stack.raw, {"jump": {"secret": "the-rotated-jump-secret"}}), environ={})
    assert len(stack.outdated_jump_links()) == objects
    stack.lime.faults.reset_stats()
    again = migrate(stack, tmp_path, fresh=True)
    assert {t: dict(c) for t, c in again.counts.items()} == {t: {"updated": n["created"]}
                                                             for t, n in first.counts.items()}
    assert lime_writes(stack.lime) == objects and stack.outdated_jump_links() == []
    stack.lime.faults.reset_stats()
    third = migrate(stack, tmp_path, fresh=True)
    assert {t: dict(c) for t, c in third.counts.items()} == {t: {"unchanged": n["created"]}
                                                             for t, n in first.counts.items()}
    assert lime_writes(stack.lime) == 0



def test_a_partition_longer_than_the_heartbeat_keeps_the_hold(make_stack: Callable[..., Stack],
                                                               tmp_path: Path) -> None:
    """The hold's connection to RabbitMQ lives through reads and writes that outlast its
    heartbeat (RabbitMQ drops a connection silent for two heartbeats, and a large
    utility's partition takes minutes): one partition, a heartbeat of 1 s, a migration
    of several seconds."""
    stack = make_stack(partitions=1, lime_settings={"faults": _latency(15)}).start(workers=0)
    stack.raw = deep_merge(stack.raw, {"bfus": {"url": stack.bfus.url, "token": "dev-bfus-token"},
                                       "broker": {"heartbeat": 1}})
    stack.config = build_config(stack.raw, environ={})
    stack.bfus.changes.seed_customers(200)
    report = migrate(stack, tmp_path, parallel=2)
    assert not report.failures and not report.stopped
    assert report.seconds > 4  # the partition held for more than two heartbeats
    assert report.objects == sum(len(stack.bfus.store.snapshots(t)) for t in TYPES)
    assert set(stack.owners().values()) == {None}  # given back


def test_an_update_sends_only_the_properties_that_differ(stack: Stack, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The index keeps digests, not values: an update still sends just the differing
    properties (an option compared by its key, as Lime reads it with id and text)."""
    stack.bfus.changes.seed_customers(40)
    mappers = check_against_lime(stack.config, LimeClient(stack.config.lime).limetypes())
    customers = stack.bfus.store.snapshots("customer")
    expected: dict[int, set[str]] = {}
    for i, snapshot in enumerate(customers):
        values = mappers["customer"].map(snapshot["data"])
        stale = [{"phone": "+46800000000"}, {"name": "Gammalt Namn AB", "phone": "+46800000000"},
                 {"customertype": "private" if values["customertype"] == "company" else "company"}, {}][i % 4]
        object_id = stack.lime.store.create("company", {**values, **stale})["_id"]
        if stale:
            expected[object_id] = set(stale)
    sent: dict[int, set[str]] = {}
    update = LimeClient.update

    def recorded(client: LimeClient, limetype: str, object_id: int, values: dict[str, Any]) -> dict[str, Any]:
        sent[object_id] = set(values) - {"bfuslastmessageid"}  # the watermark goes with every write
        return update(client, limetype, object_id, values)

    monkeypatch.setattr(LimeClient, "update", recorded)
    report = migrate(stack, tmp_path, objecttypes=("customer",))
    assert report.counts["customer"] == {"updated": len(expected), "unchanged": len(customers) - len(expected)}
    assert sent == expected
    result = check_all(stack, keys={"customer": {c["key"] for c in customers}})
    assert result.ok, result.details()
