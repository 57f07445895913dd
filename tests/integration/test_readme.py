"""The README's second-terminal commands, as written, against a stack `bfus-lime run`
started: each must succeed without a traceback, and the journey must end with the
failed changes resolved."""

from __future__ import annotations

import html
import os
import re
import shlex
import subprocess
import threading
from pathlib import Path

import requests

from sandbox.broker import BrokerHandle
from sandbox.stack import BFUS_LIME, wait_for

README = Path(__file__).resolve().parents[2] / "README.md"


def second_terminal_commands() -> list[str]:
    """The lines of the README's code block that starts with activating the venv."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
    [block] = [b for b in blocks if b.startswith(". .venv/bin/activate")]
    return [line.split("#")[0].strip() for line in block.splitlines()[1:] if line.strip()]


def printed_urls(output: str) -> list[tuple[str, int]]:
    """Every http address in run's "Where to look" block (but the one to POST to) and
    the status a GET with the credentials printed beside it answers."""
    block = output.split("Where to look:")[1].split("Sending ")[0]
    answers = []
    for url in re.findall(r"(?<!POST )(http://[^\s')]+)", block):
        headers, auth = {}, None
        if "/lime/api/" in url:
            headers["X-API-Key"] = "dev-lime-key"
        elif "/api/v1/" in url:
            headers["Authorization"] = "Bearer dev-bfus-token"
        elif url.endswith("/admin/"):
            auth = ("admin", "dev-admin")
        answers.append((url, requests.get(url, headers=headers, auth=auth, timeout=10).status_code))
    assert len(answers) >= 6, answers
    return answers


def jump_example_works(output: str) -> None:
    """The card and the jump link `run` prints for a synced customer: the card shows the
    link, and the link leads (by BFUS's bookmark) to the customer's MFU page."""
    block = output.split("From Lime to BFUS")[1]
    customerno = re.search(r"customer (\d+)'s card", block)[1]  # type: ignore[index]
    card, link = re.findall(r"(http://\S+)", block)[:2]
    page = requests.get(card, timeout=10)
    assert page.status_code == 200 and html.escape(link) in page.text, card
    jump = requests.get(link, allow_redirects=False, timeout=10)
    assert jump.status_code == 302 and jump.headers["Location"].endswith(f"/mfu/customer/{customerno}"), jump.text
    landed = requests.get(jump.headers["Location"], timeout=10)
    assert landed.status_code == 200 and customerno in landed.text


def test_the_readme_commands_work_as_written(amqp_url: str, rabbitmq: BrokerHandle, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BFUSLIME_", "RABBITMQ"))}
    env.update(RABBITMQ_URL=amqp_url, RABBITMQ_MANAGEMENT_URL=rabbitmq.management_url or "")
    run = subprocess.Popen([*BFUS_LIME, "run", "--rate", "200"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(iter(run.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        wait_for(lambda: any("All 300 changes are in Lime" in line for line in output) or run.poll() is not None,
                 240, "run to apply its changes")
        assert run.poll() is None, "".join(output)
        wait_for(lambda: any("From Lime to BFUS" in line for line in output), 30, "run's jump example")
        jump_example_works("".join(output))
        # then the other direction: the simulated Lime user's 20 edits and 3 new companies reach BFUS
        wait_for(lambda: any("reached BFUS after" in line for line in output) or run.poll() is not None,
                 120, "run's Lime user's changes to reach BFUS")
        [reached] = [line for line in output if "reached BFUS after" in line]
        assert "20 edits" in reached and "3 companies created" in reached and ": 23 sent;" in reached, reached
        assert "export BFUSLIME_CONFIG=" in "".join(output)
        for url, status in printed_urls("".join(output)):
            assert status == 200, (url, status)
        for command in second_terminal_commands():
            words = shlex.split(command)
            if words[0] == "export":
                name, value = words[1].split("=", 1)
                env[name] = value
                continue
            assert words[0] == "bfus-lime", command
            result = subprocess.run([*BFUS_LIME, *words[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                                    timeout=180)
            assert "Traceback" not in result.stderr + result.stdout, (command, result.stderr)
            assert result.returncode == 0, (command, result.returncode, result.stdout[-2000:], result.stderr[-2000:])
            if command.startswith("bfus-lime dlq requeue"):
                wait_for(lambda: "by reason" not in subprocess.run(
                    [*BFUS_LIME, "dlq", "list"], cwd=tmp_path, env=env, capture_output=True, text=True).stdout,
                    60, "every requeued change to be applied")
        final = subprocess.run([*BFUS_LIME, "dlq", "list", "--status", "all"], cwd=tmp_path, env=env,
                               capture_output=True, text=True)
        assert "resolved" in final.stdout and " failed " not in final.stdout, final.stdout
    finally:
        run.terminate()
        run.wait(60)
