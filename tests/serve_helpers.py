"""Running `bolmo serve`'s app for tests: uvicorn on a free port in a background thread."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from bolmo.loading import DEFAULT_MODEL_DIR
from bolmo.serve import ServeConfig, create_app

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


@dataclass
class Running:
    url: str  # http://127.0.0.1:PORT
    app: object

    @property
    def v1(self) -> str:
        return self.url + "/v1"


@contextmanager
def serving(model, config: ServeConfig | None = None, model_dir: Path | None = None) -> Iterator[Running]:
    app = create_app(model, config, model_dir)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound here, so no other process can take the port meanwhile
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield Running(f"http://127.0.0.1:{port}", app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def model_dir_with_chat_template(directory: Path) -> Path:
    """A copy of the bundled model with a chat template in its tokenizer_config.json."""
    target = directory / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, target)
    (target / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    return target


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@contextmanager
def cli_server(*options: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """`bolmo serve OPTIONS` in a child process (stdout and stderr together, as text), once it
    answers /health: (the process, its base URL). Terminated at the end if still running."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    process = subprocess.Popen([sys.executable, "-m", "bolmo.cli", "serve", "--port", str(port), *options],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, process.stdout.read()
        try:
            return httpx.get(base + "/health").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(up, "bolmo serve to start", timeout=120)
        yield process, base
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(timeout=60)
