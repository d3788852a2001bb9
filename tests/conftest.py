from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator

import pytest


def _threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive()}


@pytest.fixture(autouse=True)
def _thread_police() -> Iterator[None]:
    """Fail any test that leaves a thread of its own running."""
    before = _threads()
    yield
    deadline = time.monotonic() + 5.0
    while True:
        leaked = [t for t in _threads() - before if not t.name.startswith(("pydevd", "QueueFeederThread"))]
        if not leaked or time.monotonic() > deadline:
            break
        gc.collect()  # iterators dropped by the test close their threads when collected
        time.sleep(0.05)
    assert not leaked, f"test leaked threads: {[t.name for t in leaked]}"


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials, so nothing can reach a real account."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
