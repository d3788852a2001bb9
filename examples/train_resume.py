"""Checkpoint a training run with its data position, crash it, and resume exactly where it was.

A tiny CNN learns to tell reddish from bluish images, streamed from WebDataset shards in a
temporary local folder. Every ``--save-every`` steps the run saves, with ``torch.save``::

    {"model": ..., "optim": ..., "loader": loader.state_dict(), "step": ...}

The run "crashes" at ``--crash-at``; a second run rebuilds everything from scratch, loads the file
and continues at the batch after the checkpoint (the steps between the checkpoint and the crash
are redone, as after a real crash). A third, uninterrupted run with the same seed is the
reference: the resumed run must see the same batches at the same steps and end with the same
weights.

Run it with ``.venv/bin/python examples/train_resume.py``. Exits non-zero if a check fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from streaming_wds import ShardWriter, StreamingDataLoader, StreamingWebDataset

SIZE = 32
Seen = dict[int, tuple[int, list[str]]]


class SimulatedCrash(Exception):
    pass


def write_dataset(root: Path, num_samples: int, per_shard: int) -> list[str]:
    """Class 0: reddish images, class 1: bluish ones, with noise."""
    rng = np.random.default_rng(0)
    with ShardWriter(root, maxcount=per_shard) as writer:
        for i in range(num_samples):
            cls = int(rng.integers(2))  # a Python int: it is written as text, "0" or "1"
            hi, lo, green = rng.integers(120, 256), rng.integers(0, 120), rng.integers(256)
            color = np.array([hi, green, lo] if cls == 0 else [lo, green, hi])
            pixels = color + rng.integers(-40, 41, size=(SIZE, SIZE, 3))
            img = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
            writer.write({"__key__": f"{i:06d}", "jpg": img, "cls": cls})
    return writer.written


def make_loader(root: Path, batch_size: int) -> StreamingDataLoader:
    dataset = StreamingWebDataset(root, schema={".jpg": "torchrgb", ".cls": "int"}, shuffle=True, seed=7)
    return StreamingDataLoader(dataset, batch_size=batch_size, num_workers=2)


def make_model() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )
    return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def save(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash while saving never leaves a torn checkpoint


def train(
    name: str,
    root: Path,
    args: argparse.Namespace,
    ckpt: Path | None = None,
    resume: bool = False,
    crash_at: int | None = None,
    seen: Seen | None = None,
) -> tuple[Seen, nn.Module, int]:
    """Train up to ``args.epochs`` epochs; returns what every step saw, the model, the first step.

    ``seen`` (step -> (epoch, keys of its batch)) is filled as the run goes, so it survives a crash.
    """
    model, optim = make_model()
    loader = make_loader(root, args.batch_size)
    step = 0
    if resume and ckpt is not None and ckpt.exists():  # no checkpoint yet: start from scratch
        state = torch.load(ckpt, weights_only=True)  # plain containers and tensors only
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
        loader.load_state_dict(state["loader"])
        step = state["step"]
        print(
            f"[{name}] loaded {ckpt.name}: step {step}, epoch {loader.epoch}; continuing at step {step + 1}"
        )
    seen = {} if seen is None else seen
    first_step = step + 1
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(loader.epoch, args.epochs):  # a fresh loader starts at epoch 0
        loader.set_epoch(epoch)
        for batch in loader:
            step += 1
            seen[step] = (epoch, list(batch["__key__"]))
            loss = loss_fn(model(batch["jpg"]), batch["cls"])
            optim.zero_grad()
            loss.backward()
            optim.step()
            note = ""
            if ckpt is not None and step % args.save_every == 0:
                state = {
                    "model": model.state_dict(),
                    "optim": optim.state_dict(),
                    "loader": loader.state_dict(),  # plain dict: where every worker is in the epoch
                    "step": step,
                }
                save(ckpt, state)
                note = f"  -> saved {ckpt.name}"
            if step % args.print_every == 0 or note or (resume and len(seen) == 1):
                print(f"[{name}] epoch {epoch} step {step:3d} loss {loss.item():.4f}{note}")
            if step == crash_at:
                print(f"[{name}] step {step}: simulated crash!")
                raise SimulatedCrash
    return seen, model, first_step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--per-shard", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--save-every", type=int, default=10)
    parser.add_argument("--crash-at", type=int, default=43)
    parser.add_argument("--print-every", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="swds-train-") as tmp:
        root, ckpt = Path(tmp) / "shards", Path(tmp) / "checkpoint.pt"
        shards = write_dataset(root, args.samples, args.per_shard)
        print(f"wrote {args.samples} samples in {len(shards)} shards to {root}\n")

        before: Seen = {}
        try:
            train("run 1", root, args, ckpt=ckpt, crash_at=args.crash_at, seen=before)
            print("run 1 finished without crashing; lower --crash-at")
            return 1
        except SimulatedCrash:
            pass
        print()
        after, resumed_model, resumed_at = train("run 2", root, args, ckpt=ckpt, resume=True)
        print()
        reference, ref_model, _ = train("reference", root, args)

    saved_step = resumed_at - 1
    ok = True

    def check(what: str, passed: bool) -> None:
        nonlocal ok
        ok &= passed
        print(f"  [{'PASS' if passed else 'FAIL'}] {what}")

    print("\nChecks")
    check(
        f"resume continued at step {saved_step + 1}, the step after the last checkpoint (step {saved_step})",
        saved_step == args.crash_at - args.crash_at % args.save_every,
    )
    check(
        f"step {resumed_at} after resume got the same batch as the uninterrupted run",
        after.get(resumed_at) == reference.get(resumed_at),
    )
    steps = {s: k for s, k in before.items() if s <= saved_step} | after
    check(f"all {len(reference)} steps saw the reference batches, in order", steps == reference)
    everything = sorted(f"{i:06d}" for i in range(args.samples))
    per_epoch = [
        sorted(k for e, keys in steps.values() if e == epoch for k in keys) for epoch in range(args.epochs)
    ]
    check(
        f"each of the {args.epochs} epochs saw each of the {args.samples} samples exactly once",
        all(keys == everything for keys in per_epoch),
    )
    got, want = resumed_model.state_dict(), ref_model.state_dict()
    same = got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    check("final weights of the resumed run == uninterrupted run (bit for bit)", same)
    print("\nAll checks passed." if ok else "\nFAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
