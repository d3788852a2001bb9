"""Shared by the examples: a local S3 server (moto) on 127.0.0.1, so they run offline."""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack


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
