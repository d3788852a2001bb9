"""Command line: ``python -m streaming_wds index s3://bucket/prefix [--endpoint-url URL]``."""

from __future__ import annotations

import argparse
import logging
import sys

from .config import S3Options
from .errors import StreamingWDSError
from .index import build_index

log = logging.getLogger("streaming_wds")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m streaming_wds", description="streaming-wds tools")
    commands = parser.add_subparsers(dest="command", required=True)
    index = commands.add_parser("index", help="write index.json for existing shards (e.g. from webdataset)")
    index.add_argument("remote", help="s3://bucket/prefix, file:// URL or directory holding the shards")
    index.add_argument("--split", default=None, help="sub-prefix under remote")
    index.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint")
    index.add_argument("--profile", default=None, help="AWS profile")
    index.add_argument("--region", default=None, help="AWS region")
    index.add_argument("--anonymous", action="store_true", help="unsigned requests")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    s3 = None
    if args.remote.startswith("s3://"):
        s3 = S3Options(
            endpoint_url=args.endpoint_url, profile=args.profile, region=args.region, anonymous=args.anonymous
        )
    try:
        result = build_index(args.remote, args.split, s3=s3)
    except (StreamingWDSError, OSError) as exc:
        log.error("error: %s", exc)
        return 1
    log.info("indexed %d shards, %d samples", len(result.shards), result.total_samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
