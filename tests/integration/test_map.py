"""``map``: files written by ``fn(input, dir)`` land in the output; progress survives a crash.

Also the command line ``python -m streaming_wds index``. Functions given to ``map`` run in worker
processes (fork), so they live at module level and read their switches from the environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import webdataset as wds

from streaming_wds import ConfigError, JobError, MapResult, StreamingWebDataset, map
from tests.helpers import Server, moto_s3_server

CALLS = "SWDS_TEST_CALLS"  # directory: each call of fn appends a line to a file named by its input
FAIL_MARKER = "SWDS_TEST_FAIL_MARKER"  # fn raises on input $SWDS_TEST_FAIL_AT while this file exists
FAIL_AT = "SWDS_TEST_FAIL_AT"
N = 12
ITEMS = [f"item-{i:04d}" for i in range(N)]
MANIFEST = ".swds-map-node0000.json"
REPO = Path(__file__).resolve().parents[2]


def number(item: str) -> int:
    return int(item.removeprefix("item-"))


def _record_call(i: int, out: str) -> None:
    calls = os.environ.get(CALLS)
    if calls:
        with open(os.path.join(calls, f"{i:04d}"), "a") as f:
            f.write(f"{out}\n")


def outputs(i: int) -> dict[str, bytes]:
    """The files fn writes for input i (relative path -> bytes)."""
    item = ITEMS[i]
    return {
        f"{item}.txt": f"content of {item}\n".encode(),
        f"sub/g{i % 3}/{item}.bin": bytes([i]) * (i * 13 % 300),  # input 0 writes an empty file
    }


def write_files(item: str, out: str) -> None:
    i = number(item)
    _record_call(i, out)
    marker = os.environ.get(FAIL_MARKER)
    if marker and i == int(os.environ[FAIL_AT]) and os.path.exists(marker):
        raise RuntimeError(f"injected crash on input {i}")
    for rel, data in outputs(i).items():
        path = Path(out, rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def picky(item: str, out: str) -> None:
    """``write_files``, but failing on every input i with i % 4 == 1."""
    i = number(item)
    if i % 4 == 1:
        _record_call(i, out)
        raise ValueError(f"bad input {i}")
    write_files(item, out)


def expected_files(indices: Any = range(N)) -> dict[str, bytes]:
    return {rel: data for i in indices for rel, data in outputs(i).items()}


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def calls(root: Path) -> dict[int, list[str]]:
    """Input -> the directories fn was given, one per call."""
    return {int(p.name): p.read_text().splitlines() for p in sorted(root.iterdir())}


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("NODE_RANK", "NUM_NODES", "GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "SLURM_NODEID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(FAIL_MARKER, raising=False)
    record = tmp_path / "calls"
    record.mkdir()
    monkeypatch.setenv(CALLS, str(record))
    return record


def run(out: Any, fn: Any = write_files, **kw: Any) -> MapResult:
    kw.setdefault("num_workers", 0)
    kw.setdefault("progress", False)
    return map(fn, ITEMS, out, **kw)


# -- local output ----------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_local_output_has_every_file_and_a_rerun_skips_all(tmp_path: Path, workers: int) -> None:
    out = tmp_path / "out"
    assert run(out, num_workers=workers) == MapResult(done=N, skipped_done=0, files=0, bytes=0, failed=0)
    assert tree(out) == {MANIFEST: (out / MANIFEST).read_bytes(), **expected_files()}
    assert calls(tmp_path / "calls") == {i: [str(out)] for i in range(N)}

    assert run(out, num_workers=workers) == MapResult(done=N, skipped_done=N, files=0, bytes=0, failed=0)
    assert calls(tmp_path / "calls") == {i: [str(out)] for i in range(N)}  # no second call
    assert {n: d for n, d in tree(out).items() if n != MANIFEST} == expected_files()


@pytest.mark.parametrize("workers", [0, 2])
def test_interrupted_run_then_rerun_does_only_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    out = tmp_path / "out"
    marker = tmp_path / "marker"
    marker.write_text("crash")
    monkeypatch.setenv(FAIL_MARKER, str(marker))
    monkeypatch.setenv(FAIL_AT, "7")
    with pytest.raises(JobError) as info:
        run(out, num_workers=workers)
    assert (info.value.index, info.value.item) == (7, "item-0007")
    assert str(info.value).startswith(
        "fn failed on input #7 ('item-0007'): RuntimeError: injected crash on input 7\n"
    )
    assert MANIFEST in tree(out)  # progress is saved on the way out
    for rel, data in expected_files(range(7)).items():
        assert (out / rel).read_bytes() == data
    first = calls(tmp_path / "calls")
    assert all(first[i] == [str(out)] for i in range(8))
    if workers == 0:
        assert sorted(first) == list(range(8))

    marker.unlink()
    result = run(out, num_workers=workers)
    assert result == MapResult(done=N, skipped_done=7, files=0, bytes=0, failed=0)
    assert {n: d for n, d in tree(out).items() if n != MANIFEST} == expected_files()
    second = calls(tmp_path / "calls")
    assert {i: second[i] for i in range(7)} == {i: [str(out)] for i in range(7)}  # done: not called again
    assert second[7] == [str(out)] * 2
    for i in range(8, N):  # a worker may have started some of these before the crash stopped it
        assert second[i] == [str(out)] * (len(first.get(i, [])) + 1)
    if workers == 0:
        assert second == {**{i: [str(out)] for i in range(N)}, 7: [str(out)] * 2}

    assert run(out, num_workers=workers).skipped_done == N
    assert calls(tmp_path / "calls") == second


@pytest.mark.parametrize("workers", [0, 2])
def test_on_error_skip_counts_failures_and_retries_them(
    tmp_path: Path, workers: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="streaming_wds.mapping")
    out = tmp_path / "out"
    bad = [i for i in range(N) if i % 4 == 1]
    good = [i for i in range(N) if i % 4 != 1]
    result = run(out, fn=picky, on_error="skip", num_workers=workers)
    assert result == MapResult(done=len(good), skipped_done=0, files=0, bytes=0, failed=len(bad))
    assert result.failed == 3
    assert {n: d for n, d in tree(out).items() if n != MANIFEST} == expected_files(good)
    assert [r.getMessage().splitlines()[0] for r in caplog.records] == [
        f"map: on_error='skip': skipped input #{i}: ValueError: bad input {i}" for i in bad
    ]
    # failed inputs are not recorded as done: a rerun tries them (only them) again
    again = run(out, fn=picky, on_error="skip", num_workers=workers)
    assert again == MapResult(done=len(good), skipped_done=len(good), files=0, bytes=0, failed=len(bad))
    assert calls(tmp_path / "calls") == {i: [str(out)] * (2 if i in bad else 1) for i in range(N)}


def test_invalid_on_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="on_error"):
        run(tmp_path / "out", on_error="never")
    assert not (tmp_path / "out").exists()
    assert calls(tmp_path / "calls") == {}


def test_a_manifest_of_another_job_raises_config_error(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(out)
    with pytest.raises(ConfigError, match=r"\.swds-map-node0000\.json records a different map job"):
        map(write_files, ITEMS[:-1], out, num_workers=0, progress=False)
    with pytest.raises(ConfigError, match="different map job"):
        run(out, fn=picky)
    assert calls(tmp_path / "calls") == {i: [str(out)] for i in range(N)}


_BARRIER = threading.Barrier(2, timeout=20)


def meeting(item: str, out: str) -> None:
    if item == ITEMS[0]:
        _BARRIER.wait()  # both jobs are running before either goes on
    Path(out, f"{item}.txt").write_text(item)


def test_concurrent_in_process_jobs_in_threads_write_to_their_own_output(tmp_path: Path) -> None:
    _BARRIER.reset()
    errors: list[BaseException] = []

    def job(out: Path) -> None:
        try:
            map(meeting, ITEMS[:4], out, num_workers=0, progress=False)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=job, args=(tmp_path / name,)) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for name in ("a", "b"):
        assert sorted(p.name for p in (tmp_path / name).glob("*.txt")) == [
            f"{item}.txt" for item in ITEMS[:4]
        ]


# -- S3 output -------------------------------------------------------------------------------

BUCKET = "swds-map"


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with moto_s3_server(BUCKET) as srv:
        yield srv


@pytest.mark.s3server
def test_s3_output_uploads_every_file_under_the_prefix(
    tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # forked workers inherit it
    prefix = f"job-{uuid.uuid4().hex[:8]}"
    url = f"s3://{BUCKET}/{prefix}"
    expected = expected_files()
    result = run(url, num_workers=2, s3=server.s3)
    assert result == MapResult(
        done=N, skipped_done=0, files=len(expected), bytes=sum(len(d) for d in expected.values()), failed=0
    )
    objects = server.objects(BUCKET, prefix)
    assert sorted(objects) == sorted([MANIFEST, *expected])
    assert {n: d for n, d in objects.items() if n != MANIFEST} == expected

    dirs = calls(tmp_path / "calls")
    assert sorted(dirs) == list(range(N))
    given = [d for i in range(N) for d in dirs[i]]
    assert len(given) == N
    assert len(set(given)) == N  # a fresh directory per call
    assert all(Path(d).parent == scratch and Path(d).name.startswith("swds-map-") for d in given)
    assert list(scratch.iterdir()) == []  # every temporary directory was removed

    assert run(url, num_workers=2, s3=server.s3) == MapResult(done=N, skipped_done=N)
    assert len([d for ds in calls(tmp_path / "calls").values() for d in ds]) == N


@pytest.mark.s3server
def test_s3_output_with_skipped_failures(
    tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    prefix = f"job-{uuid.uuid4().hex[:8]}"
    good = [i for i in range(N) if i % 4 != 1]
    result = run(f"s3://{BUCKET}/{prefix}", fn=picky, on_error="skip", num_workers=2, s3=server.s3)
    expected = expected_files(good)
    assert result == MapResult(
        done=len(good),
        skipped_done=0,
        files=len(expected),
        bytes=sum(len(d) for d in expected.values()),
        failed=3,
    )
    assert {n: d for n, d in server.objects(BUCKET, prefix).items() if n != MANIFEST} == expected
    assert list(scratch.iterdir()) == []  # removed after failed calls too


# -- the command line ------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streaming_wds", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )


def test_cli_indexes_webdataset_shards(tmp_path: Path) -> None:
    data = tmp_path / "data" / "train"
    data.mkdir(parents=True)
    paths = [data / "part-000.tar", data / "part-001.tar"]
    for n, (path, count) in enumerate(zip(paths, (4, 3), strict=True)):
        with wds.TarWriter(str(path)) as tw:
            for j in range(count):
                tw.write({"__key__": f"k{n}_{j}", "txt": f"text {n} {j}", "cls": j})
    proc = cli("index", str(tmp_path / "data"), "--split", "train")
    assert (proc.returncode, proc.stdout) == (0, "")
    assert proc.stderr.splitlines() == ["indexed 2 shards, 7 samples"]
    index = json.loads((data / "index.json").read_bytes())
    assert index == {
        "format": "streaming_wds.index",
        "version": 1,
        "total_samples": 7,
        "shards": [
            {
                "name": p.name,
                "samples": count,
                "size": p.stat().st_size,
                "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                "crc32": zlib.crc32(p.read_bytes()),
            }
            for p, count in zip(paths, (4, 3), strict=True)
        ],
    }
    ds = StreamingWebDataset(str(data))
    assert ds.num_samples == 7
    assert [s["__key__"] for s in ds] == [f"k0_{j}" for j in range(4)] + [f"k1_{j}" for j in range(3)]
    with tarfile.open(paths[0]) as tf:  # the shards themselves were not touched
        assert tf.getnames()[:2] == ["k0_0.cls", "k0_0.txt"]


def test_cli_on_an_empty_directory_fails_naming_it(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = cli("index", str(empty))
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == f"error: no *.tar shards found directly under {empty.as_uri()!r}\n"
    assert list(empty.iterdir()) == []
