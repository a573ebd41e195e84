"""The object stores `-o` reaches, one entry each: its scheme, how a container is
named, how the obstore store is configured from the cloud's own variables, and what
to check when it refuses. Layout (files or webdataset) is the other axis, in s3.py and
tar.py: any store here takes either.

    s3://bucket/prefix       S3 and servers that speak it (AWS_*; s3.make_store)
    az://container/prefix    Azure Blob Storage (AZURE_STORAGE_*), Azurite with an endpoint;
                             abfs:// and abfss:// (fsspec's spellings) are the same
    gs://bucket/prefix       Google Cloud Storage through its S3-compatible XML API with
                             HMAC keys: the s3:// code path, with Google's endpoint

Why gs:// is not obstore's GCSStore: no local server accepts its writes (fake-gcs-server
answers 400 "invalid uploadType" to every XML-API upload, gcp-storage-emulator omits the
ETag obstore needs), so its upload path could not be tested; the XML API's S3 dialect is
the code path tested against SeaweedFS, and its reads are tested against fake-gcs-server.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from oidownload.core.errors import ConfigError

if TYPE_CHECKING:
    from obstore.store import AzureConfig, ClientConfig, RetryConfig, S3Config

    from oidownload.sinks.s3 import S3Uri

GCS_XML_ENDPOINT = "https://storage.googleapis.com"


@dataclass(frozen=True, slots=True)
class Store:
    scheme: str
    noun: str  # what the first part of the URI names: bucket, container
    name_re: re.Pattern[str]
    make: Callable[[S3Uri, float | None], Any]  # (uri, the run's --grace or None)
    hint: str  # what to check when the store refuses the write check


def _clamp(x: float, low: float, high: float) -> timedelta:
    return timedelta(seconds=min(high, max(low, x)))


def client_options(endpoint: str, grace: float | None = None) -> ClientConfig:
    """Timeouts that follow the run's --grace (10 s when not given), for every store: a
    server that accepts and never answers fails a request after at most 3 x grace
    without a first byte (2 to 30 s), and a request with all its retries ends within
    12 x grace (10 to 120 s). A stopping run does not wait that long: the task (Task.close_sink)
    abandons what is still under way at the end of its grace."""
    g = 10.0 if grace is None else grace
    client: ClientConfig = {"timeout": _clamp(12 * g, 10, 120), "connect_timeout": _clamp(g, 1, 10),
                            "read_timeout": _clamp(3 * g, 2, 30)}
    if endpoint.startswith("http://"):
        client["allow_http"] = True
    return client


def retry_config(grace: float | None = None) -> RetryConfig:
    g = 10.0 if grace is None else grace
    return {"max_retries": 5, "retry_timeout": _clamp(12 * g, 10, 120),
            "backoff": {"init_backoff": timedelta(seconds=0.2), "max_backoff": timedelta(seconds=15), "base": 2.0}}


def _s3(uri: S3Uri, grace: float | None) -> Any:
    from oidownload.sinks.s3 import make_store

    return make_store(uri, grace)


def connection_string(text: str) -> dict[str, str]:
    """AZURE_STORAGE_CONNECTION_STRING's fields (Key=value;...), which obstore does not read."""
    fields: dict[str, str] = {}
    for part in text.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep:
            fields[key.strip().lower()] = value.strip()
    return fields


# Azurite's published development account (the emulator's UseDevelopmentStorage=true).
_DEV_ACCOUNT = "devstoreaccount1"
_DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def _azure(uri: S3Uri, grace: float | None) -> Any:
    """AzureStore reads AZURE_STORAGE_ACCOUNT_NAME, AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_SAS_TOKEN,
    AZURE_STORAGE_ENDPOINT, AZURE_CLIENT_ID... itself; a connection string is read here."""
    from obstore.store import AzureStore

    config: AzureConfig = {}
    env = os.environ
    endpoint = env.get("AZURE_STORAGE_ENDPOINT") or env.get("AZURE_ENDPOINT") or ""
    conn = connection_string(env.get("AZURE_STORAGE_CONNECTION_STRING", ""))
    if conn.get("usedevelopmentstorage", "").lower() == "true":
        conn = {"accountname": _DEV_ACCOUNT, "accountkey": _DEV_KEY,
                "blobendpoint": f"http://127.0.0.1:10000/{_DEV_ACCOUNT}"}
    if conn:
        if "accountname" in conn:
            config["account_name"] = conn["accountname"]
        if "accountkey" in conn:
            config["account_key"] = conn["accountkey"]
        if "sharedaccesssignature" in conn:
            config["sas_key"] = conn["sharedaccesssignature"]
        if "blobendpoint" in conn:
            endpoint = conn["blobendpoint"]
        elif "accountname" in conn and conn.get("defaultendpointsprotocol") == "http":
            endpoint = f"http://{conn['accountname']}.blob.{conn.get('endpointsuffix', 'core.windows.net')}"
    if endpoint:
        config["endpoint"] = endpoint.rstrip("/")
    emulator = env.get("AZURE_STORAGE_USE_EMULATOR", "").lower() in ("1", "true")
    client = client_options("http://" if emulator else endpoint, grace)
    return AzureStore(uri.bucket, prefix=uri.prefix or None, config=config or None,
                      client_options=client, retry_config=retry_config(grace))


def _gcs(uri: S3Uri, grace: float | None) -> Any:
    """The S3 dialect of Cloud Storage's XML API: HMAC keys in AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY, the endpoint Google's (or STORAGE_EMULATOR_HOST's)."""
    from obstore.store import S3Store

    endpoint = os.environ.get("STORAGE_EMULATOR_HOST") or GCS_XML_ENDPOINT
    if "://" not in endpoint:
        endpoint = f"http://{endpoint}"  # the emulator variable is often host:port
    config: S3Config = {"endpoint": endpoint.rstrip("/"), "region": "auto"}
    if not os.environ.get("AWS_ACCESS_KEY_ID"):
        config["skip_signature"] = True  # a public bucket can still be read
    return S3Store(uri.bucket, prefix=uri.prefix or None, config=config,
                   client_options=client_options(endpoint, grace), retry_config=retry_config(grace))


STORES = {
    "s3": Store("s3", "bucket", re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"), _s3,
                "Check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL and that the bucket exists "
                "and allows writes"),
    "az": Store("az", "container", re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}"), _azure,
                "Check AZURE_STORAGE_ACCOUNT_NAME/AZURE_STORAGE_ACCOUNT_KEY (or AZURE_STORAGE_CONNECTION_STRING, "
                "AZURE_STORAGE_SAS_TOKEN), AZURE_STORAGE_ENDPOINT and that the container exists and allows writes"),
    "gs": Store("gs", "bucket", re.compile(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]"), _gcs,
                "Check the HMAC key in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (Cloud Storage's "
                "interoperability keys), STORAGE_EMULATOR_HOST and that the bucket exists and allows writes"),
}
# fsspec's (adlfs') spellings of az://container/prefix, the account from the same variables.
for _alias in ("abfs", "abfss"):
    STORES[_alias] = dataclasses.replace(STORES["az"], scheme=_alias)


def store_for(scheme: str, out: str) -> Store:
    found = STORES.get(scheme.lower())
    if found is None:
        raise ConfigError(f"-o {out}: only local folders and {', '.join(f'{s}://' for s in STORES)} "
                          "are supported")
    return found
