"""Stopping `bolmo serve` while a response streams: Ctrl-C gives requests in flight
`--shutdown-grace` seconds, then ends their responses with one log line each (no traceback);
a second Ctrl-C stops at once, with one line. Exit code 130 (SIGINT) either way."""

from __future__ import annotations

import json
import signal
import threading

import httpx
import pytest

from serve_helpers import cli_server, wait_for

# Long enough to still be streaming when the signal lands: 8 choices of 4,096 bytes.
LONG_STREAM = {"prompt": "The Python", "max_tokens": 4096, "n": 8, "temperature": 0, "stream": True}


class Stream(threading.Thread):
    """Reads a streamed completion in the background: its chunks, and whether it ended cleanly."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base, self.chunks, self.error = base, [], None

    def run(self) -> None:
        try:
            with httpx.stream("POST", self.base + "/v1/completions", json=LONG_STREAM, timeout=120) as response:
                for line in response.iter_lines():
                    if line.startswith("data: {"):
                        self.chunks.append(json.loads(line[6:]))
        except httpx.HTTPError as exc:
            self.error = exc


@pytest.mark.slow
def test_ctrl_c_cuts_streams_short_after_the_grace_period_without_tracebacks():
    with cli_server("--shutdown-grace", "0") as (process, base):
        stream = Stream(base)
        stream.start()
        wait_for(lambda: stream.chunks, "the first streamed chunk")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 128 + signal.SIGINT
        stream.join(timeout=60)
        output = process.stdout.read()
    assert "Traceback" not in output and "CancelledError" not in output, output
    assert "POST /v1/completions cut short: the server is shutting down" in output
    assert output.rstrip().endswith("bolmo serve: interrupted")
    assert stream.error is None  # the response was ended, not broken off
    assert not any(c["choices"][0]["finish_reason"] for c in stream.chunks)  # cut short, not finished


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once():
    with cli_server() as (process, base):  # the default grace period (10 s) is never waited out
        stream = Stream(base)
        stream.start()
        wait_for(lambda: stream.chunks, "the first streamed chunk")
        process.send_signal(signal.SIGINT)
        wait_for(lambda: not _accepting(base), "the shutdown to begin (no new connections)", timeout=30)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=5) == 128 + signal.SIGINT
        output = process.stdout.read()
    assert "Traceback" not in output and "CancelledError" not in output, output
    assert "bolmo serve: interrupted again: stopped without waiting for the requests in flight" in output


def test_shutdown_grace_must_be_a_finite_number_of_seconds(capsys):
    from bolmo.cli import main

    for bad in ("-1", "nan", "inf"):
        assert main(["serve", "--shutdown-grace", bad]) == 2
        assert "--shutdown-grace must be a finite number of seconds >= 0" in capsys.readouterr().err


def _accepting(base: str) -> bool:
    try:
        return httpx.get(base + "/health", timeout=5).status_code == 200
    except httpx.TransportError:
        return False
