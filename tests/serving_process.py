"""A real `bortengine serve` process for the serving tests: `python -m bortengine serve MODEL --port 0` on
127.0.0.1, its address read from the line it prints, ready once GET /health answers 200; stopped with SIGTERM
(killed only if it does not exit). Also the session's servers and in-process engines, as fixtures shared by
tests/test_serving.py and tests/test_serving_robustness.py.
"""
from __future__ import annotations

import atexit
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

import httpx
import pytest

from test_isolation import _env

# The main MiniLM server's limits, small so that the tests reach them with little work.
MAX_ITEMS = 8
MAX_BODY = 16384
MAX_TOKENS = 64
MAX_QUEUE = 8
BODY_TIMEOUT = 3
MAIN_OPTIONS = ("--max-batch-items", str(MAX_ITEMS), "--max-body-bytes", str(MAX_BODY), "--max-input-tokens",
                str(MAX_TOKENS), "--max-queue", str(MAX_QUEUE), "--max-batch-tokens", "128",
                "--model-name", "minilm", "--body-timeout", str(BODY_TIMEOUT))
API_KEY = "test-key-0123456789"
CLASSIFIER_TOKENS = 16


class ServerProcess:
    def __init__(self, model: Path, *options: str, env: Optional[dict] = None, background_job: bool = False):
        """background_job: started as a shell's background job is, SIGINT ignored, in a process group of its own."""
        self.logs = Path(tempfile.mkdtemp(prefix="bortengine-serve-"))
        atexit.register(shutil.rmtree, self.logs, ignore_errors=True)   # read by failing tests until the end
        self.stdout = self.logs / "stdout.txt"
        self.stderr = self.logs / "stderr.txt"
        command = [sys.executable, "-m", "bortengine", "serve", str(model), "--port", "0", "--log-level", "warning",
                   *options]
        with open(self.stdout, "w") as out, open(self.stderr, "w") as err:
            # SIGINT as from a terminal: a test runner started as a background job hands its children SIGINT ignored
            # (and one under nohup SIGHUP, which the server then leaves alone, as asked)
            sigint = signal.SIG_IGN if background_job else signal.SIG_DFL

            def as_from_a_terminal() -> None:
                signal.signal(signal.SIGINT, sigint)
                signal.signal(signal.SIGHUP, signal.SIG_DFL)

            self.proc = subprocess.Popen(command, stdout=out, stderr=err, env={**_env(), **(env or {})},
                                         preexec_fn=as_from_a_terminal, start_new_session=background_job)
        self.url = ""
        self.health_statuses: list[int] = []

    def start(self, timeout: float = 120) -> "ServerProcess":
        """Wait for the address it prints, then for GET /health to answer 200 (recording every status seen). With
        --workers, for the "ready" line first: a worker accepts connections only once it has loaded the model."""
        deadline = time.monotonic() + timeout
        while not self.url:
            match = re.search(r"listening on (http://\S+)", self.stdout.read_text())
            if match:
                self.url = match.group(1)
            else:
                self._check_alive(deadline)
                time.sleep(0.02)
        while "worker processes" in self.stdout.read_text() and "ready:" not in self.stdout.read_text():
            self._check_alive(deadline)
            time.sleep(0.02)
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self.health_statuses or self.health_statuses[-1] != 200:
                self._check_alive(deadline)
                self.health_statuses.append(client.get("/health").status_code)
                time.sleep(0.02)
        return self

    def _check_alive(self, deadline: float) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"the server exited with {self.proc.returncode}: {self.output()}")
        if time.monotonic() > deadline:
            self.kill()
            raise AssertionError(f"the server was not ready in time: {self.output()}")

    def client(self, **headers: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120, headers=headers)

    def address(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        return host, int(port)

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then the exit code; killed (and the test failed) if it does not exit in time."""
        if self.proc.poll() is None:
            self.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the server did not exit {timeout} s after SIGTERM: {self.output()}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def output(self) -> str:
        return f"stdout: {self.stdout.read_text()!r} stderr: {self.stderr.read_text()[-3000:]!r}"


def serving(model: Path, *options: str, env: Optional[dict] = None) -> Iterator[ServerProcess]:
    """A started server for a fixture, stopped (and checked to exit 0 on SIGTERM) at its end."""
    server = ServerProcess(model, *options, env=env).start()
    try:
        yield server
    finally:
        code = server.stop()
    assert code == 0, f"the server exited with {code} on SIGTERM: {server.output()}"


@pytest.fixture(scope="session")
def minilm_server(minilm) -> Iterator[ServerProcess]:
    yield from serving(minilm, *MAIN_OPTIONS)


@pytest.fixture(scope="session")
def serving_classifier(make_model) -> Path:
    return make_model(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                      head="classifier", num_labels=3, seed=7)


@pytest.fixture(scope="session")
def classifier_server(serving_classifier) -> Iterator[ServerProcess]:
    """The classifier behind an API key given in the environment, refusing texts over 16 tokens, every forward in
    the engine's worker threads (the main server runs a lone short request's forward on the event loop)."""
    yield from serving(serving_classifier, "--no-truncation", "--max-input-tokens", str(CLASSIFIER_TOKENS),
                       "--no-forwards-on-loop", env={"BORTENGINE_API_KEY": API_KEY})


@pytest.fixture(scope="session")
def minilm_engine(minilm):
    from bortengine.engine import load

    return load(minilm)


def texts_of(n: int, words: int = 6, seed: int = 0) -> list[str]:
    """n different texts of about `words` words (a word is one or two tokens)."""
    vocabulary = ("river", "quiet", "engine", "paper", "seven", "orange", "market", "cloud", "ticket", "garden",
                  "violin", "harbor", "pencil", "winter", "silver", "doctor", "planet", "bridge")
    return [" ".join(vocabulary[(seed + 7 * i + 3 * j + i * j) % len(vocabulary)] for j in range(words)) + f" {i}."
            for i in range(n)]

