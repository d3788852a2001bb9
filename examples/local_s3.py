"""Shared by the examples: a local S3 server (moto) on 127.0.0.1, so they run offline, and the
command-line options that choose between it and a real store."""

from __future__ import annotations

import argparse
import logging
import os
from contextlib import ExitStack
from urllib.parse import ParseResult, urlparse


def start_local_server(stack: ExitStack, bucket: str) -> str:
    """A moto S3 server on 127.0.0.1 with ``bucket`` created; stopped when ``stack`` closes.

    Sets fake credentials (and drops any profile) so nothing can reach a real account.
    Returns the endpoint URL.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
    )
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        os.environ.pop(var, None)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the server's per-request log
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # 0: any free port
    server.start()
    stack.callback(server.stop)
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    print(f"Local S3 server (moto) at {endpoint}, bucket {bucket!r}")
    return endpoint


def add_s3_arguments(parser: argparse.ArgumentParser, default_output: str) -> None:
    """``--output s3://bucket/prefix``, ``--endpoint-url`` and ``--profile``."""
    parser.add_argument("--output", default=default_output, help="s3://bucket/prefix")
    parser.add_argument(
        "--endpoint-url", help="S3-compatible endpoint; without it, a local server is started"
    )
    parser.add_argument("--profile", help="AWS profile for --endpoint-url (default: boto3's chain)")


def s3_output(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ParseResult:
    """The parsed ``--output``, after checking it and that ``--profile`` comes with an endpoint."""
    url = urlparse(args.output)
    if url.scheme != "s3" or not url.netloc:
        parser.error(f"--output must look like s3://bucket/prefix, got {args.output!r}")
    if args.profile and not args.endpoint_url:
        parser.error("--profile needs --endpoint-url (without it, a local server with fake keys is used)")
    return url
