"""The Lime client's transport (shared/lime.py) against a local HTTP server: what it
sends, how it reads answers and errors, where it finds a proxy."""

from __future__ import annotations

import json
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared.config import LimeConfig
from shared.lime import LimeClient, LimeRejected, LimeUnavailable, proxy_for

SEEN: list[dict] = []
UNLIMITED = {"connect_timeout": 2.0, "read_timeout": 5.0, "rate_limit": 1000.0, "processed_limetype": "bfusprocessed",
             "failed_limetype": "bfusfailed"}
ANSWERS: list[tuple[int, bytes]] = []
HEADERS: list[tuple[str, str]] = []  # sent with the next answer
PAUSE: list[float] = []  # seconds before the next answer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        SEEN.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                     "body": self.rfile.read(length)})
        status, body = ANSWERS.pop(0)
        if PAUSE:
            time.sleep(PAUSE.pop())
        self.send_response(status)
        for name, value in HEADERS:
            self.send_header(name, value)
        HEADERS.clear()
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/api/v1/"
    httpd.shutdown()


@pytest.fixture
def client(server: str) -> LimeClient:
    SEEN.clear()
    ANSWERS.clear()
    HEADERS.clear()
    PAUSE.clear()
    return LimeClient(LimeConfig(url=server, api_key="secret-key", **UNLIMITED))


def test_a_write_sends_json_with_the_key_and_reads_the_json_answer(client: LimeClient) -> None:
    ANSWERS.append((200, b'{"_id": 7, "name": "Kund \\u00e5"}'))
    assert client.update("company", 7, {"name": "Kund å", "n": 10**30}) == {"_id": 7, "name": "Kund å"}
    sent = SEEN[0]
    assert (sent["method"], sent["path"]) == ("PUT", "/api/v1/limeobject/company/7/")
    assert sent["headers"]["X-API-Key"] == "secret-key"
    assert sent["headers"]["Content-Type"] == "application/json"
    assert sent["headers"]["User-Agent"].startswith("bfus-lime/")
    assert json.loads(sent["body"]) == {"name": "Kund å", "n": 10**30}


def test_params_are_added_to_a_next_link_that_has_a_query_already(client: LimeClient, server: str) -> None:
    ANSWERS.extend([(200, b'{"_embedded": {"limeobjects": []}}')] * 2)
    client.list_page("company", {"bfusnumber": "a b&c", "_limit": 2})
    client.request("GET", server + "limeobject/company/?_offset=2", params={"_limit": 2})
    assert SEEN[0]["path"] == "/api/v1/limeobject/company/?bfusnumber=a+b%26c&_limit=2"
    assert SEEN[1]["path"] == "/api/v1/limeobject/company/?_offset=2&_limit=2"


def test_a_delete_answered_204_is_none(client: LimeClient) -> None:
    ANSWERS.append((204, b""))
    assert client.delete("company", 7) is None


def test_lime_errors_are_split_into_rejected_and_unavailable(client: LimeClient) -> None:
    ANSWERS.append((404, b'{"error": "not_found", "message": "no company 7"}'))
    with pytest.raises(LimeRejected) as rejected:
        client.get("company", 7)
    assert (rejected.value.status, rejected.value.code, rejected.value.message) == (404, "not_found", "no company 7")
    ANSWERS.append((502, b"<html>Bad gateway</html>"))
    with pytest.raises(LimeUnavailable, match="Lime answered 502: <html>Bad gateway</html>"):
        client.get("company", 7)
    ANSWERS.append((200, b"not json"))
    with pytest.raises(LimeUnavailable, match="Lime sent a 200 that is not JSON"):
        client.get("company", 7)


def test_a_closed_port_is_unreachable_with_the_sockets_reason() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = LimeClient(LimeConfig(url=f"http://127.0.0.1:{port}/api/v1/", api_key="k", **UNLIMITED))
    with pytest.raises(LimeUnavailable, match="Lime unreachable: Connection refused"):
        client.get("company", 1)


def test_the_proxy_comes_from_the_environment_and_no_proxy_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert proxy_for("https://lime.example/api/v1/") is None
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    assert proxy_for("https://lime.example/api/v1/") == "http://proxy.example:3128"
    assert proxy_for("http://lime.example/api/v1/") is None  # only https_proxy named
    monkeypatch.setenv("no_proxy", "lime.example")
    assert proxy_for("https://lime.example/api/v1/") is None


def test_a_429_carries_limes_retry_after(client: LimeClient) -> None:
    ANSWERS.append((429, b'{"error": "too_many_requests", "message": "slow down"}'))
    HEADERS.append(("Retry-After", "7"))
    with pytest.raises(LimeUnavailable, match="Lime answered 429: slow down") as busy:
        client.get("company", 7)
    assert (busy.value.retry_after, busy.value.status) == (7.0, 429)


def test_a_gzipped_answer_is_decoded(client: LimeClient) -> None:
    packed = zlib.compressobj(wbits=31)
    ANSWERS.append((200, packed.compress(b'{"_id": 7}') + packed.flush()))
    HEADERS.append(("Content-Encoding", "gzip"))
    assert client.get("company", 7) == {"_id": 7}
    assert "gzip" in SEEN[0]["headers"]["Accept-Encoding"]


def test_an_answer_later_than_the_timeouts_is_unavailable(server: str) -> None:
    SEEN.clear()
    ANSWERS.append((200, b"{}"))
    PAUSE.append(1.0)
    client = LimeClient(LimeConfig(url=server, api_key="k", **{**UNLIMITED, "connect_timeout": 0.1,
                                                               "read_timeout": 0.2}))
    started = time.monotonic()
    with pytest.raises(LimeUnavailable, match="Lime did not answer GET in time"):
        client.get("company", 7)
    assert time.monotonic() - started < 0.9


def test_calls_go_through_the_proxy_the_environment_names(monkeypatch: pytest.MonkeyPatch, server: str) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", server.removesuffix("api/v1/"))  # the test server plays the proxy
    SEEN.clear()
    ANSWERS.append((200, b'{"_id": 7}'))
    client = LimeClient(LimeConfig(url="http://lime.example/api/v1/", api_key="k", **UNLIMITED))
    assert client.get("company", 7) == {"_id": 7}
    assert SEEN[0]["path"] == "http://lime.example/api/v1/limeobject/company/7/"  # the whole URL: a proxy's request
