"""``optimize``: deterministic, resumable shard writing, locally, on S3 and over several nodes.

Functions given to ``optimize`` run in worker processes (fork), so they live at module level and
take their fault switches from the environment, which forked workers inherit.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import tarfile
import threading
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from webdataset import tariterators

from streaming_wds import (
    ConfigError,
    JobError,
    Node,
    OptimizeResult,
    S3Storage,
    ShardExistsError,
    ShardWriter,
    StorageError,
    StreamingWebDataset,
    StreamOptions,
    optimize,
    resolve_node,
)
from tests.helpers import Server, moto_s3_server

# -- the job ---------------------------------------------------------------------------------

FAIL_MARKER = "SWDS_TEST_FAIL_MARKER"  # fn raises on input $SWDS_TEST_FAIL_AT while this file exists
FAIL_AT = "SWDS_TEST_FAIL_AT"
FORBID = "SWDS_TEST_FORBID_CALLS"  # fn raises whenever it is called
NODE_VARS = (
    "NODE_RANK",
    "NUM_NODES",
    "GROUP_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "SLURM_NODEID",
    "SLURM_NNODES",
    "SLURM_JOB_NUM_NODES",
    "RANK",
    "LOCAL_RANK",
)

N = 40
ITEMS = [f"item-{i:04d}" for i in range(N)]
MANIFEST = ".swds-optimize-node0000.json"
OPTIONS = StreamOptions(chunk_size=4096, buffer_bytes=64 * 1024, max_workers=2)


def number(item: str) -> int:
    return int(item.removeprefix("item-"))


def record(i: int, j: int) -> dict[str, Any]:
    return {
        "__key__": f"in{i:04d}_{j}",
        "txt": f"input {i} part {j}",
        "bin": bytes([i % 256]) * ((i * 37 + j * 11) % 700),
        "json": {"i": i, "j": j},
    }


def samples_of(i: int) -> list[dict[str, Any]]:
    """Input i gives 1, 3, 2, 0, 0 samples for i % 5 == 0..4 (6 samples per 5 inputs)."""
    return [record(i, j) for j in range((1, 3, 2, 0, 0)[i % 5])]


def _faults(i: int) -> None:
    if os.environ.get(FORBID):
        raise AssertionError(f"fn was called on input {i}")
    marker = os.environ.get(FAIL_MARKER)
    if marker and i == int(os.environ[FAIL_AT]) and os.path.exists(marker):
        raise RuntimeError(f"injected crash on input {i}")


def varied(item: str) -> Any:
    """A dict, a list, a generator, None or an empty list, by input."""
    i = number(item)
    _faults(i)
    samples = samples_of(i)
    kind = i % 5
    if kind == 0:
        return samples[0]
    if kind == 1:
        return samples
    if kind == 2:
        return iter(samples)
    if kind == 3:
        return None
    return []


def flaky(item: str) -> Any:
    """``varied``, but raising on every input i with i % 7 == 4."""
    i = number(item)
    if i % 7 == 4:
        raise ValueError(f"bad input {i}")
    return varied(item)


def holey(item: str) -> Any:
    """``varied``, but returning None where ``flaky`` raises."""
    return None if number(item) % 7 == 4 else varied(item)


def sized(item: str) -> dict[str, Any]:
    """One sample of a fixed size per input."""
    i = number(item)
    return {"__key__": f"f{i:04d}", "bin": bytes([i % 256]) * 1000}


def expected_samples(indices: range | list[int] = range(N), fn: Any = None) -> list[dict[str, Any]]:
    keep = (lambda i: True) if fn is None else fn
    return [s for i in indices if keep(i) for s in samples_of(i)]


# -- reading the output independently ----------------------------------------------------------


def tar_samples(path: Path) -> list[tuple[str, dict[str, bytes]]]:
    """(key, {field: bytes}) in order, read with the standard library's tarfile."""
    out: list[tuple[str, dict[str, bytes]]] = []
    with tarfile.open(path) as tf:
        for member in tf.getmembers():
            key, field = member.name.split(".", 1)
            data = tf.extractfile(member).read()  # type: ignore[union-attr]
            if not out or out[-1][0] != key:
                out.append((key, {}))
            out[-1][1][field] = data
    return out


def fields_of(s: dict[str, Any]) -> dict[str, bytes]:
    return {
        "bin": s["bin"],
        "json": json.dumps(s["json"], separators=(",", ":")).encode(),
        "txt": s["txt"].encode(),
    }


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def shards_and_index(root: Path) -> dict[str, bytes]:
    return {n: d for n, d in tree(root).items() if n.endswith(".tar") or n == "index.json"}


def stamps(root: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(root.glob("*.tar"))}


def check_output(
    root: Path, expected: list[dict[str, Any]], per_shard: int, pattern: str = "shard-%06d.tar"
) -> None:
    """Shard names, shard contents, index.json and a read-back, all exact."""
    chunks = [expected[k : k + per_shard] for k in range(0, len(expected), per_shard)]
    names = [pattern % k for k in range(len(chunks))]
    assert sorted(p.name for p in root.glob("*.tar")) == names
    for name, chunk in zip(names, chunks, strict=True):
        assert tar_samples(root / name) == [(s["__key__"], fields_of(s)) for s in chunk]
    index = json.loads((root / "index.json").read_bytes())
    assert index == {
        "format": "streaming_wds.index",
        "version": 1,
        "total_samples": len(expected),
        "shards": [
            {
                "name": name,
                "samples": len(chunk),
                "size": (root / name).stat().st_size,
                "sha256": hashlib.sha256((root / name).read_bytes()).hexdigest(),
                "crc32": zlib.crc32((root / name).read_bytes()),
            }
            for name, chunk in zip(names, chunks, strict=True)
        ],
    }
    got = list(StreamingWebDataset(str(root)))
    assert [s["__key__"] for s in got] == [s["__key__"] for s in expected]
    for n, (s, e) in enumerate(zip(got, expected, strict=True)):
        assert {f: s[f] for f in ("bin", "json", "txt")} == fields_of(e)
        assert s["__url__"] == str(root / names[n // per_shard])


def run(out: Any, fn: Any = varied, **kw: Any) -> OptimizeResult:
    kw.setdefault("num_workers", 0)
    kw.setdefault("maxcount", 5)
    kw.setdefault("progress", False)
    return optimize(fn, ITEMS, out, **kw)


def crash(out: Any, at: int, marker: Path, monkeypatch: pytest.MonkeyPatch, **kw: Any) -> JobError:
    """Run with input ``at`` failing; the JobError raised."""
    marker.write_text("crash")
    monkeypatch.setenv(FAIL_MARKER, str(marker))
    monkeypatch.setenv(FAIL_AT, str(at))
    with pytest.raises(JobError) as info:
        run(out, **kw)
    marker.unlink()
    return info.value


@pytest.fixture(autouse=True)
def _no_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*NODE_VARS, FAIL_MARKER, FAIL_AT, FORBID):
        monkeypatch.delenv(name, raising=False)


# -- output and its determinism --------------------------------------------------------------


def test_output_is_identical_for_any_number_of_workers(tmp_path: Path) -> None:
    results = {w: run(tmp_path / f"w{w}", num_workers=w) for w in (0, 1, 2)}
    expected = expected_samples()
    assert len(expected) == 48
    check_output(tmp_path / "w0", expected, 5)
    reference = tree(tmp_path / "w0")
    assert sorted(reference) == [MANIFEST, "index.json"] + [f"shard-{k:06d}.tar" for k in range(10)]
    for w in (1, 2):
        assert tree(tmp_path / f"w{w}") == reference
        assert results[w] == results[0]
    r = results[0]
    assert (r.samples, r.failed, r.index_written) == (48, 0, True)
    assert [e.name for e in r.shards] == [f"shard-{k:06d}.tar" for k in range(10)]
    assert [e.samples for e in r.shards] == [5] * 9 + [3]
    assert [e.size for e in r.shards] == [(tmp_path / "w0" / e.name).stat().st_size for e in r.shards]


def test_inputs_may_be_any_iterable(tmp_path: Path) -> None:
    optimize(varied, iter(ITEMS), tmp_path / "it", num_workers=0, maxcount=5, progress=False)
    run(tmp_path / "seq")
    assert tree(tmp_path / "it") == tree(tmp_path / "seq")


def test_webdataset_reads_the_output_with_the_same_keys(tmp_path: Path) -> None:
    run(tmp_path, num_workers=2)
    got: list[dict[str, Any]] = []
    for path in sorted(tmp_path.glob("*.tar")):
        with open(path, "rb") as f:
            files = ({**fs, "__url__": str(path)} for fs in tariterators.tar_file_iterator(f))
            got.extend(tariterators.group_by_keys(files))
    expected = expected_samples()
    assert [s["__key__"] for s in got] == [s["__key__"] for s in expected]
    for n, (s, e) in enumerate(zip(got, expected, strict=True)):
        assert {k: v for k, v in s.items() if not k.startswith("__")} == fields_of(e)
        assert s["__url__"] == str(tmp_path / f"shard-{n // 5:06d}.tar")


def test_rollover_by_maxsize(tmp_path: Path) -> None:
    one = run(tmp_path / "one", fn=sized, maxcount=N)
    assert [e.samples for e in one.shards] == [N]
    per_sample, rest = divmod(one.shards[0].size - 1024, N)  # the end-of-archive marker is 1 KiB
    assert rest == 0
    assert per_sample == 512 + 1024  # a header, then 1000 bytes padded to whole blocks

    exact = run(tmp_path / "exact", fn=sized, maxcount=N, maxsize=3 * per_sample + 1024)
    assert [e.samples for e in exact.shards] == [3] * 13 + [1]
    assert [e.size for e in exact.shards] == [3 * per_sample + 1024] * 13 + [per_sample + 1024]

    under = run(tmp_path / "under", fn=sized, maxcount=N, maxsize=3 * per_sample + 1023)
    assert [e.samples for e in under.shards] == [2] * 20

    tiny = run(tmp_path / "tiny", fn=sized, maxcount=N, maxsize=100)  # a sample too big: a shard each
    assert [e.samples for e in tiny.shards] == [1] * N

    both = run(tmp_path / "both", fn=sized, maxcount=2, maxsize=3 * per_sample + 1024)
    assert [e.samples for e in both.shards] == [2] * 20
    for root, result in ((tmp_path / "exact", exact), (tmp_path / "under", under)):
        assert sorted(p.name for p in root.glob("*.tar")) == [e.name for e in result.shards]
        keys = [k for e in result.shards for k, _ in tar_samples(root / e.name)]
        assert keys == [f"f{i:04d}" for i in range(N)]
        assert json.loads((root / "index.json").read_bytes())["total_samples"] == N


def test_progress_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(tmp_path / "on", progress=True)
    err = capsys.readouterr().err
    assert "optimize: 100%" in err
    assert f"{N}/{N}" in err
    assert "samples=48" in err
    run(tmp_path / "off", progress=False)
    assert capsys.readouterr().err == ""


# -- interruption and resume -----------------------------------------------------------------


@pytest.mark.parametrize(("crash_workers", "rerun_workers"), [(0, 0), (2, 2), (2, 0)])
def test_rerun_after_a_crash_gives_the_uninterrupted_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_workers: int, rerun_workers: int
) -> None:
    reference = run(tmp_path / "ref")
    out = tmp_path / "out"
    # Inputs 0..17 give 22 samples: shards 0-3 are full and written; shard 4 holds the second
    # and third sample of input 16 when input 18 fails, so the rerun restarts inside input 16.
    err = crash(out, 18, tmp_path / "marker", monkeypatch, num_workers=crash_workers)
    assert (err.index, err.item) == (18, "item-0018")
    assert str(err).startswith(
        "fn failed on input #18 ('item-0018'): RuntimeError: injected crash on input 18"
    )
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST] + [f"shard-{k:06d}.tar" for k in range(4)]
    assert not (out / "index.json").exists()
    before = stamps(out)

    result = run(out, num_workers=rerun_workers)
    assert result == reference
    assert shards_and_index(out) == shards_and_index(tmp_path / "ref")
    assert {n: s for n, s in stamps(out).items() if n in before} == before  # kept, not rewritten
    check_output(out, expected_samples(), 5)


@pytest.mark.parametrize(
    ("damage", "shard"), [("delete", 7), ("truncate", 7), ("truncate", 1), ("delete", 0)]
)
def test_rerun_recomputes_from_the_first_missing_or_short_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str, shard: int
) -> None:
    reference = run(tmp_path / "ref")
    out = tmp_path / "out"
    crash(out, 33, tmp_path / "marker", monkeypatch)  # 42 samples before: shards 0-7 written
    names = [f"shard-{k:06d}.tar" for k in range(8)]
    assert sorted(p.name for p in out.glob("*.tar")) == names
    path = out / names[shard]
    if damage == "delete":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:-1024])  # lost its end: one sample short or more
    before = stamps(out)

    assert run(out, num_workers=2) == reference
    assert shards_and_index(out) == shards_and_index(tmp_path / "ref")
    after = stamps(out)
    assert {n: after[n] for n in names[:shard]} == {n: before[n] for n in names[:shard]}
    assert all(after[n] != before.get(n) for n in names[shard:])


def test_crash_before_any_shard_then_rerun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run(tmp_path / "ref")
    out = tmp_path / "out"
    err = crash(out, 2, tmp_path / "marker", monkeypatch)  # 4 samples: the first shard is not full
    assert err.index == 2
    assert list(out.glob("*")) == []  # nothing written, not even a manifest
    run(out)
    assert tree(out) == tree(tmp_path / "ref")


def test_rerunning_a_finished_job_does_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = run(tmp_path, num_workers=2)
    content, before = tree(tmp_path), stamps(tmp_path)
    monkeypatch.setenv(FORBID, "1")  # any call of fn would now fail the job
    again = run(tmp_path, num_workers=2)
    assert again == first
    assert again.index_written
    assert tree(tmp_path) == content
    assert stamps(tmp_path) == before


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_on_error_skip_counts_and_skips_failed_inputs(
    tmp_path: Path, workers: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="streaming_wds.optimize")
    skipped = [i for i in range(N) if i % 7 == 4]
    result = run(tmp_path / "skip", fn=flaky, on_error="skip", num_workers=workers)
    plain = run(tmp_path / "none", fn=holey, num_workers=workers)
    assert result.failed == len(skipped) == 6
    assert plain.failed == 0
    assert result.shards == plain.shards
    assert result.samples == plain.samples == len(expected_samples(fn=lambda i: i % 7 != 4))
    assert shards_and_index(tmp_path / "skip") == shards_and_index(tmp_path / "none")
    check_output(tmp_path / "skip", expected_samples(fn=lambda i: i % 7 != 4), 5)
    assert [r.getMessage().split(":")[:3] for r in caplog.records] == [
        ["optimize", " on_error='skip'", f" skipped input #{i}"] for i in skipped
    ]
    assert all(
        r.getMessage().endswith(f"ValueError: bad input {i}")
        for r, i in zip(caplog.records, skipped, strict=True)
    )


def test_on_error_raise_names_the_input(tmp_path: Path) -> None:
    with pytest.raises(JobError) as info:
        run(tmp_path, fn=flaky, num_workers=2)
    assert (info.value.index, info.value.item) == (4, "item-0004")
    assert str(info.value).startswith("fn failed on input #4 ('item-0004'): ValueError: bad input 4\n")
    assert "Traceback" in info.value.cause
    assert not (tmp_path / "index.json").exists()


def test_invalid_on_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="on_error"):
        run(tmp_path, on_error="ignore")
    assert not tmp_path.joinpath("index.json").exists()


@pytest.mark.parametrize(
    "change",
    [{"maxcount": 6}, {"maxsize": 1 << 20}, {"fn": holey}, {"inputs": ITEMS[:-1]}],
    ids=["maxcount", "maxsize", "fn", "inputs"],
)
def test_a_manifest_of_another_job_raises_config_error(tmp_path: Path, change: dict[str, Any]) -> None:
    run(tmp_path)
    content = tree(tmp_path)
    kw = {"fn": varied, "inputs": ITEMS, "maxcount": 5, **change}
    with pytest.raises(ConfigError, match=r"\.swds-optimize-node0000\.json records a different optimize job"):
        optimize(kw.pop("fn"), kw.pop("inputs"), tmp_path, num_workers=0, progress=False, **kw)
    assert tree(tmp_path) == content


def test_an_interrupted_job_of_other_arguments_raises_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    crash(tmp_path / "out", 18, tmp_path / "marker", monkeypatch)
    with pytest.raises(ConfigError, match="different optimize job"):
        run(tmp_path / "out", maxcount=4)


def test_foreign_shards_raise_unless_overwrite(tmp_path: Path) -> None:
    run(tmp_path / "ref")
    out = tmp_path / "out"
    with ShardWriter(out, maxcount=2) as w:  # another dataset, with its own index
        for i in range(3):
            w.write({"__key__": f"foreign{i}", "txt": "x"})
    foreign = tree(out)
    assert sorted(foreign) == ["index.json", "shard-000000.tar", "shard-000001.tar"]

    with pytest.raises(ShardExistsError) as info:
        run(out)
    assert info.value.url == str(out / "shard-000000.tar")
    assert tree(out) == foreign  # nothing written, no manifest

    result = run(out, overwrite=True)
    assert result == run(tmp_path / "ref2")
    assert shards_and_index(out) == shards_and_index(tmp_path / "ref")


def test_a_foreign_later_shard_is_not_overwritten(tmp_path: Path) -> None:
    tmp_path.joinpath("shard-000003.tar").write_bytes(b"someone else's data")
    with pytest.raises(ShardExistsError):
        run(tmp_path)
    assert tmp_path.joinpath("shard-000003.tar").read_bytes() == b"someone else's data"


# -- several nodes ---------------------------------------------------------------------------


def node_shares(count: int, n: int = N) -> list[range]:
    return [Node(rank=r, count=count).share(n) for r in range(count)]


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_a_node_writes_its_share_under_its_own_names(tmp_path: Path, rank: int) -> None:
    result = run(tmp_path, num_nodes=3, node_rank=rank, maxcount=4)
    expected = expected_samples(node_shares(3)[rank])
    mine = [f"shard-n{rank:04d}-{k:06d}.tar" for k in range(-(-len(expected) // 4))]
    assert [e.name for e in result.shards] == mine
    assert (result.samples, result.failed, result.index_written) == (len(expected), 0, False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".swds-optimize-node{rank:04d}.json", *mine]
    assert [k for name in mine for k, _ in tar_samples(tmp_path / name)] == [s["__key__"] for s in expected]
    again = run(tmp_path, num_nodes=3, node_rank=rank, maxcount=4)  # finished: nothing to do
    assert again == result


@pytest.mark.parametrize("order", [[0, 1, 2], [1, 2, 0], [2, 0, 1]])
def test_nodes_one_after_another(tmp_path: Path, order: list[int]) -> None:
    shares = node_shares(3)
    assert shares == [range(0, 13), range(13, 26), range(26, 40)]
    results = {r: run(tmp_path, num_nodes=3, node_rank=r, maxcount=4) for r in order}
    assert [results[r].index_written for r in order] == [False, False, True]
    names: list[str] = []
    for r in range(3):
        expected = expected_samples(shares[r])
        count = -(-len(expected) // 4)
        mine = [f"shard-n{r:04d}-{k:06d}.tar" for k in range(count)]
        assert [e.name for e in results[r].shards] == mine
        assert results[r].samples == len(expected)
        keys = [k for name in mine for k, _ in tar_samples(tmp_path / name)]
        assert keys == [s["__key__"] for s in expected]
        names += mine
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == names
    assert sorted(p.name for p in tmp_path.glob(".swds-*")) == [
        f".swds-optimize-node{r:04d}.json" for r in range(3)
    ]
    index = json.loads((tmp_path / "index.json").read_bytes())
    assert [s["name"] for s in index["shards"]] == names
    assert index["total_samples"] == 48
    assert [s["samples"] for s in index["shards"]] == [e.samples for r in range(3) for e in results[r].shards]
    got = [s["__key__"] for s in StreamingWebDataset(str(tmp_path))]
    assert got == [s["__key__"] for s in expected_samples()]


def test_nodes_in_parallel_threads(tmp_path: Path) -> None:
    results: dict[int, OptimizeResult] = {}
    errors: list[BaseException] = []

    def node(rank: int) -> None:
        try:
            results[rank] = run(tmp_path, num_nodes=3, node_rank=rank, maxcount=4)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=node, args=(r,)) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(r.index_written for r in results.values()) >= 1
    index = json.loads((tmp_path / "index.json").read_bytes())
    assert [s["name"] for s in index["shards"]] == [e.name for r in range(3) for e in results[r].shards]
    assert index["total_samples"] == sum(r.samples for r in results.values()) == 48
    got = [s["__key__"] for s in StreamingWebDataset(str(tmp_path))]
    assert got == [s["__key__"] for s in expected_samples()]


def test_a_node_with_no_inputs(tmp_path: Path) -> None:
    assert node_shares(3, 2) == [range(0, 0), range(0, 1), range(1, 2)]
    results = [
        optimize(varied, ITEMS[:2], tmp_path, num_workers=0, num_nodes=3, node_rank=r, progress=False)
        for r in range(3)
    ]
    assert [([e.name for e in r.shards], r.samples, r.index_written) for r in results] == [
        ([], 0, False),
        (["shard-n0001-000000.tar"], 1, False),
        (["shard-n0002-000000.tar"], 3, True),
    ]
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == [
        "shard-n0001-000000.tar",
        "shard-n0002-000000.tar",
    ]
    assert [s["__key__"] for s in StreamingWebDataset(str(tmp_path))] == [
        "in0000_0",
        "in0001_0",
        "in0001_1",
        "in0001_2",
    ]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"NODE_RANK": "1", "NUM_NODES": "3"}, Node(1, 3)),
        ({"GROUP_RANK": "2", "WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "4"}, Node(2, 4)),
        ({"SLURM_NODEID": "3", "SLURM_NNODES": "5"}, Node(3, 5)),
        ({"SLURM_NODEID": "1", "SLURM_JOB_NUM_NODES": "2"}, Node(1, 2)),
        ({"NODE_RANK": "0", "NUM_NODES": "2", "SLURM_NODEID": "1", "SLURM_NNODES": "4"}, Node(0, 2)),
        (
            {
                "GROUP_RANK": "1",
                "WORLD_SIZE": "4",
                "LOCAL_WORLD_SIZE": "2",
                "SLURM_NODEID": "0",
                "SLURM_NNODES": "3",
            },
            Node(1, 2),
        ),
        ({"WORLD_SIZE": "8", "RANK": "3"}, Node(0, 1)),  # not torchrun's node variables: one node
        ({"NODE_RANK": "1"}, Node(0, 1)),
        ({}, Node(0, 1)),
    ],
)
def test_node_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: Node
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert resolve_node(None, None) == expected
    assert resolve_node(1, 0) == Node(0, 1)  # explicit arguments win


@pytest.mark.parametrize(
    "env",
    [
        {"NODE_RANK": "1", "NUM_NODES": "2"},
        {"GROUP_RANK": "1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"},
        {"SLURM_NODEID": "1", "SLURM_NNODES": "2"},
    ],
    ids=["generic", "torchrun", "slurm"],
)
def test_optimize_takes_the_node_from_the_launcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = run(tmp_path / "env")
    expected = expected_samples(range(20, 40))
    assert not result.index_written
    assert [e.name for e in result.shards] == [f"shard-n0001-{k:06d}.tar" for k in range(5)]
    assert [k for e in result.shards for k, _ in tar_samples(tmp_path / "env" / e.name)] == [
        s["__key__"] for s in expected
    ]
    assert sorted(p.name for p in (tmp_path / "env").iterdir() if not p.name.endswith(".tar")) == [
        ".swds-optimize-node0001.json"
    ]
    # explicit arguments win over the environment
    single = run(tmp_path / "explicit", num_nodes=1, node_rank=0)
    assert single.index_written
    check_output(tmp_path / "explicit", expected_samples(), 5)


@pytest.mark.parametrize(
    ("kwargs", "env"),
    [
        ({"num_nodes": 2}, {}),
        ({"node_rank": 0}, {"NODE_RANK": "0", "NUM_NODES": "2"}),
        ({"num_nodes": 2, "node_rank": 2}, {}),
        ({"num_nodes": 2, "node_rank": -1}, {}),
        ({"num_nodes": 0, "node_rank": 0}, {}),
        ({}, {"NODE_RANK": "2", "NUM_NODES": "2"}),
        ({}, {"SLURM_NODEID": "0", "SLURM_NNODES": "0"}),
        ({}, {"GROUP_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "4"}),
    ],
)
def test_invalid_node_raises_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, int], env: dict[str, str]
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match="node"):
        run(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_explicit_node_wins_over_an_invalid_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NODE_RANK", "5")
    monkeypatch.setenv("NUM_NODES", "2")
    with pytest.raises(ConfigError, match="launcher environment gives an invalid node"):
        run(tmp_path / "env")
    assert run(tmp_path / "out", num_nodes=2, node_rank=1).shards[0].name == "shard-n0001-000000.tar"


def test_zero_local_world_size_raises_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GROUP_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "0")
    with pytest.raises(ConfigError):
        resolve_node(None, None)


# -- in-process jobs in threads --------------------------------------------------------------

_BARRIER = threading.Barrier(2, timeout=20)


def tagged_a(item: str) -> dict[str, Any]:
    if item == ITEMS[0]:
        _BARRIER.wait()  # both jobs are running before either goes on
    return {"__key__": f"a{number(item):04d}", "txt": "a"}


def tagged_b(item: str) -> dict[str, Any]:
    if item == ITEMS[0]:
        _BARRIER.wait()
    return {"__key__": f"b{number(item):04d}", "txt": "b"}


def test_concurrent_in_process_jobs_in_threads_are_independent(tmp_path: Path) -> None:
    _BARRIER.reset()
    errors: list[BaseException] = []

    def job(fn: Any, out: Path) -> None:
        try:
            optimize(fn, ITEMS[:4], out, num_workers=0, progress=False)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=job, args=(tagged_a, tmp_path / "a")),
        threading.Thread(target=job, args=(tagged_b, tmp_path / "b")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [k for k, _ in tar_samples(tmp_path / "a" / "shard-000000.tar")] == [f"a{i:04d}" for i in range(4)]
    assert [k for k, _ in tar_samples(tmp_path / "b" / "shard-000000.tar")] == [f"b{i:04d}" for i in range(4)]


# -- S3 --------------------------------------------------------------------------------------

BUCKET = "swds-optimize"


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with moto_s3_server(BUCKET) as srv:
        yield srv


@pytest.mark.s3server
def test_s3_output_with_worker_processes(tmp_path: Path, server: Server) -> None:
    reference = run(tmp_path)
    prefix = f"job-{uuid.uuid4().hex[:8]}"
    url = f"s3://{BUCKET}/{prefix}"
    result = run(url, num_workers=2, s3=server.s3)
    assert result == reference
    objects = server.objects(BUCKET, prefix)
    assert sorted(objects) == sorted(p.name for p in tmp_path.iterdir())
    assert {n: d for n, d in objects.items() if n != MANIFEST} == shards_and_index(tmp_path)
    ds = StreamingWebDataset(url, s3=server.s3, options=OPTIONS)
    got = list(ds)
    assert [s["__key__"] for s in got] == [s["__key__"] for s in expected_samples()]
    assert got[1]["__url__"] == f"{url}/shard-000000.tar"
    assert ds.num_samples == 48
    del ds, got
    gc.collect()


@pytest.mark.s3server
def test_s3_rerun_after_a_crash(tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = run(tmp_path / "ref")
    prefix = f"job-{uuid.uuid4().hex[:8]}"
    url = f"s3://{BUCKET}/{prefix}"
    err = crash(url, 18, tmp_path / "marker", monkeypatch, num_workers=2, s3=server.s3)
    assert err.index == 18
    assert sorted(server.objects(BUCKET, prefix)) == [MANIFEST] + [f"shard-{k:06d}.tar" for k in range(4)]
    assert run(url, num_workers=2, s3=server.s3) == reference
    objects = server.objects(BUCKET, prefix)
    assert {n: d for n, d in objects.items() if n != MANIFEST} == shards_and_index(tmp_path / "ref")


@pytest.mark.parametrize("operation", ["PutObject", "UploadPart"])
def test_s3_upload_failure_then_rerun(operation: str) -> None:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="faults")
        reference = run(S3Storage("faults", "ref"))
        storage = S3Storage("faults", "job")
        if operation == "UploadPart":
            storage.multipart_threshold = 1  # every shard is a multipart upload
        armed = [True]
        calls: list[str] = []

        def fail(params: dict[str, Any], **_: Any) -> None:
            calls.append(params["Key"])
            if armed[0] and params["Key"] == "job/shard-000002.tar":
                raise ClientError({"Error": {"Code": "InternalError", "Message": "injected"}}, operation)

        storage.client.meta.events.register(f"before-parameter-build.s3.{operation}", fail)
        with pytest.raises(StorageError) as info:
            run(storage)
        assert str(info.value).startswith("cannot write s3://faults/job/shard-000002.tar (bucket='faults'): ")
        assert str(info.value).endswith("InternalError: injected")
        assert "job/shard-000002.tar" in calls

        def listing(prefix: str) -> dict[str, bytes]:
            keys = [
                o["Key"]
                for o in client.list_objects_v2(Bucket="faults", Prefix=f"{prefix}/").get("Contents", ())
            ]
            return {
                k[len(prefix) + 1 :]: client.get_object(Bucket="faults", Key=k)["Body"].read() for k in keys
            }

        after_failure = listing("job")
        assert "index.json" not in after_failure
        assert "shard-000002.tar" not in after_failure
        assert client.list_multipart_uploads(Bucket="faults").get("Uploads", []) == []

        armed[0] = False
        assert run(storage) == reference
        assert {n: d for n, d in listing("job").items() if n != MANIFEST} == {
            n: d for n, d in listing("ref").items() if n != MANIFEST
        }
        assert sorted(listing("job")) == [MANIFEST, "index.json"] + [f"shard-{k:06d}.tar" for k in range(10)]
