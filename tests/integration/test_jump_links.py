"""``bfus-lime jump-links [--refresh]`` (migration/linkrefresh.py) against the Lime
stand-in over HTTP: it counts and fixes only the missing and outdated links, at one
list call per 50 objects plus one write per link fixed, and a killed run resumes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from migration.linkrefresh import LinkRefresh, RefreshOptions, RefreshReport
from sandbox.stack import BFUS_LIME, Stack, config_environment, wait_for
from shared.jumplinks import JumpLinks, jump_url
from shared.lime import LimeClient
from shared.limemeta import check_against_lime
from shared.retry import Backoff

OLD_SECRET = "the-secret-of-last-year"


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack(partitions=2, jump=True)


def links(stack: Stack) -> JumpLinks:
    return JumpLinks(stack.config.jump, stack.config.receiver.public_url)


def fill(stack: Stack, current: int = 0, missing: int = 0, outdated: int = 0, unsynced: int = 0) -> dict[str, int]:
    """Companies in Lime: with their link, without one, with one of an old secret, and
    without a customer number (not synced: no link wanted). Written straight into the
    stand-in's store (no API call counted)."""
    store, wanted = stack.lime.store, links(stack)
    for i in range(current + missing + outdated):
        company = store.create("company", {"name": f"Företag {i} AB", "customerno": str(100000 + i)})
        if i < current:
            link = wanted.url("company", company["_id"])
        elif i < current + missing:
            continue
        else:
            link = jump_url(stack.config.receiver.public_url, OLD_SECRET, "company", company["_id"])
        store.update("company", company["_id"], {"bfuslink": link})
    for i in range(unsynced):
        store.create("company", {"name": f"Prospekt {i} AB"})
    return {"up_to_date": current, "missing": missing, "outdated": outdated, "not_synced": unsynced}


def refresh(stack: Stack, tmp_path: Path, write: bool) -> RefreshReport:
    lime = LimeClient(stack.config.lime)
    mappers = check_against_lime(stack.config, lime.limetypes())
    options = RefreshOptions(("company",), write, tmp_path / "jump-links.json")
    return LinkRefresh(lime, links(stack), mappers, options, Backoff(0.05, 0.5)).run()


def writes(stack: Stack) -> int:
    return sum(n for k, n in stack.lime.faults.stats()["requests"].items() if k.startswith(("POST", "PUT")))


def test_counting_finds_missing_and_outdated_links_and_writes_nothing(stack: Stack, tmp_path: Path) -> None:
    expected = fill(stack, current=40, missing=25, outdated=35, unsynced=7)
    stack.lime.faults.reset_stats()
    report = refresh(stack, tmp_path, write=False)
    assert dict(report.counts["company"]) == expected
    assert writes(stack) == 0 and not (tmp_path / "jump-links.json").exists()
    assert report.lime_calls == 3  # 107 objects: three pages of 50


def test_refresh_writes_only_the_missing_and_outdated_links(stack: Stack, tmp_path: Path) -> None:
    expected = fill(stack, current=40, missing=25, outdated=35, unsynced=7)
    prospects = {o["_id"]: o for o in stack.lime_objects("company") if not o.get("customerno")}
    stack.lime.faults.reset_stats()
    report = refresh(stack, tmp_path, write=True)
    assert dict(report.counts["company"]) == expected and report.written["company"] == 60
    assert writes(stack) == 60 and stack.lime.faults.stats()["most_writes_of_one_object"] == 1
    assert report.lime_calls == 3 + 60  # pages + links written
    assert stack.outdated_jump_links() == [] and not any(o.get("bfuslink") for o in prospects.values())
    assert all(stack.lime.store.get("company", i) == o for i, o in prospects.items())  # untouched
    assert not (tmp_path / "jump-links.json").exists()  # a finished run leaves no checkpoint
    stack.lime.faults.reset_stats()
    again = refresh(stack, tmp_path, write=True)
    assert dict(again.counts["company"]) == {"up_to_date": 100, "not_synced": 7} and writes(stack) == 0


def _command(stack: Stack, tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ", "BFUSLIME"))},
           **config_environment(stack.raw)}
    return subprocess.Popen([*BFUS_LIME, "jump-links", "--checkpoint", str(tmp_path / "cp.json"), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _position(tmp_path: Path) -> dict[str, Any]:
    try:
        return json.loads((tmp_path / "cp.json").read_text())["positions"].get("company", {})
    except (OSError, ValueError):
        return {}


def test_a_killed_refresh_resumes_where_it_stopped_writing_each_link_once(stack: Stack, tmp_path: Path) -> None:
    fill(stack, current=100, missing=300, outdated=200)
    stack.lime.faults.reset_stats()
    first = _command(stack, tmp_path, "--refresh", "--rate", "150")
    wait_for(lambda: _position(tmp_path).get("next") and stack.lime.faults.stats()["objects_written"] >= 150, 60,
             "the refresh to be well on its way")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    done_before = stack.lime.faults.stats()["objects_written"]
    assert 150 <= done_before < 500
    second = _command(stack, tmp_path, "--refresh", "--rate", "150")
    output, _ = second.communicate(timeout=120)
    assert second.returncode == 0, output
    assert "continuing a stopped run" in output
    stats = stack.lime.faults.stats()
    assert stats["objects_written"] == 500 and stats["most_writes_of_one_object"] == 1
    pages_read_again = stats["requests"]["GET company"] - 1 - 12  # the metadata read; 600 objects: 12 pages
    assert pages_read_again <= 2  # it went on from its checkpoint, not from the start
    assert stack.outdated_jump_links() == []
    assert re.search(r"company: \d+ checked, \d+ fixed \.\.\.", output)  # progress as it goes


def test_the_command_counts_by_default_and_says_how_to_fix(stack: Stack, tmp_path: Path) -> None:
    fill(stack, current=3, missing=2, outdated=1)
    done = _command(stack, tmp_path)
    output, _ = done.communicate(timeout=60)
    assert done.returncode == 0, output
    assert "3 links missing or outdated: `bfus-lime jump-links --refresh` writes them." in output
    assert len(stack.outdated_jump_links()) == 3  # counted, not written


def test_without_the_jump_configured_it_says_what_is_missing(make_stack: Callable[..., Stack],
                                                              tmp_path: Path) -> None:
    stack = make_stack(partitions=2)
    done = _command(stack, tmp_path, "--refresh")
    output, _ = done.communicate(timeout=60)
    assert done.returncode == 2 and "jump links are off" in output, output


def test_the_refresh_keeps_to_its_rate(stack: Stack, tmp_path: Path) -> None:
    """At --rate 10 it stays under a Lime allowing 30 calls a second (its first burst
    included): Lime never has to answer 429."""
    fill(stack, missing=60)
    stack.lime.faults.configure({"rate_limit": 30, "rate_window": 1.0})
    stack.lime.faults.reset_stats()
    done = _command(stack, tmp_path, "--refresh", "--rate", "10", "--limetypes", "company")
    output, _ = done.communicate(timeout=60)
    assert done.returncode == 0, output
    stats = stack.lime.faults.stats()
    assert stats["objects_written"] == 60 and "429" not in stats["answers"], stats["answers"]
