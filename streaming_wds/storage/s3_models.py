"""A botocore session whose service models are decoded by msgspec, without what S3 clients skip.

botocore decodes its JSON models with ``json.loads(..., object_pairs_hook=OrderedDict)``: about
75 ms of the 110-170 ms it takes to build the first S3 client of a process (S3's model, its
endpoint rules and the 1.2 MB ``endpoints.json``), on the path to the first batch. The same files
decoded by msgspec into plain dicts (ordered too) take about 25 ms. The loader is set through the
session's public ``data_loader`` component and its ``file_loader`` (a constructor argument of
botocore's ``Loader``); a file it cannot decode is left to botocore's own loader.

The decoded models stay in the session's cache for the life of the process, and a DataLoader
worker forked from the main process inherits them: every megabyte kept counts once per process
of the tree. Two parts of them are never read by an S3 client, so they are dropped as they are
decoded (7.6 MB of Python objects -> 3.2 MB):

* ``endpoints.json`` describes every AWS service in every region (4.2 MB decoded). Only the
  services this session creates clients for are kept: S3 and those botocore's credential
  providers call (STS, SSO, SSO-OIDC, sign-in). Partitions and regions stay whole; a service
  that is not listed still resolves from its partition's defaults, as in botocore. The other
  services are never decoded (each stays a ``msgspec.Raw`` slice of the file until dropped):
  decoding them only to drop them left 2.9 MiB more resident in the process, freed but not
  returned to the system, which forked workers inherit.
* ``documentation`` strings of service models (1.8 MB of S3's 2.6) become empty strings: they
  feed only the docstrings botocore generates for client methods.
"""

from __future__ import annotations

import gzip
import os
from typing import Any

import msgspec
from botocore.loaders import JSONFileLoader
from botocore.session import Session

_FORMATS = ((".json", open), (".json.gz", gzip.open))

#: The services whose entries in ``endpoints.json`` are kept: S3, and the services botocore's
#: credential providers create clients for (assume-role and web identity, SSO, sign-in).
ENDPOINT_SERVICES = frozenset({"s3", "sts", "sso", "sso-oidc", "signin"})
_DOC_KEYS = ("documentation", "documentationUrl")


class _MsgspecFileLoader(JSONFileLoader):  # type: ignore[misc]  # botocore is untyped
    def load_file(self, file_path: str) -> Any:
        for ext, opener in _FORMATS:
            path = file_path + ext
            if os.path.isfile(path):
                with opener(path, "rb") as f:
                    raw = f.read()
                try:
                    return decode(os.path.basename(file_path), raw)
                except msgspec.DecodeError:
                    break
        return super().load_file(file_path)  # another format, or JSON msgspec refuses


def decode(name: str, raw: bytes) -> Any:
    """The JSON of botocore's file ``name``, less what an S3 client never reads."""
    if name == "endpoints":
        try:
            return _decode_endpoints(raw)
        except msgspec.ValidationError:  # not shaped as expected: decode it all, then drop
            pass
    return slim(name, msgspec.json.decode(raw))


_Fields = dict[str, msgspec.Raw]


def _decode_endpoints(raw: bytes) -> dict[str, Any]:
    # Only the kept services are decoded; the rest are Raw slices of ``raw``, dropped unread.
    out: dict[str, Any] = {}
    for key, value in msgspec.json.decode(raw, type=_Fields).items():
        if key != "partitions":
            out[key] = msgspec.json.decode(value)
            continue
        partitions = []
        for fields in msgspec.json.decode(value, type=list[_Fields]):
            partition: dict[str, Any] = {}
            for name, part in fields.items():
                if name == "services":
                    services = msgspec.json.decode(part, type=_Fields)
                    partition[name] = {
                        k: msgspec.json.decode(v) for k, v in services.items() if k in ENDPOINT_SERVICES
                    }
                else:
                    partition[name] = msgspec.json.decode(part)
            partitions.append(partition)
        out[key] = partitions
    return out


def slim(name: str, data: Any) -> Any:
    """``data`` decoded from botocore's file ``name``, less what an S3 client never reads."""
    if name == "endpoints" and isinstance(data, dict):
        for partition in data.get("partitions", ()):
            services = partition.get("services") if isinstance(partition, dict) else None
            if isinstance(services, dict):
                partition["services"] = {k: v for k, v in services.items() if k in ENDPOINT_SERVICES}
    elif name == "service-2":
        _blank_documentation(data)
    return data


def _blank_documentation(data: Any) -> None:
    # Emptied, not removed: botocore reads some of these keys with [] (client context params).
    stack = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key in _DOC_KEYS:
                if isinstance(node.get(key), str):
                    node[key] = ""
            stack.extend(v for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, (dict, list)))


def botocore_session() -> Session:
    """A new botocore session (as ``boto3.Session`` would make) with the lighter model loader."""
    session = Session()
    loader = session.get_component("data_loader")
    if isinstance(getattr(loader, "file_loader", None), JSONFileLoader):
        loader.file_loader = _MsgspecFileLoader()
    return session
