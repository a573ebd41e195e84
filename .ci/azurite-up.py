"""CI: the Azure Blob Storage server the tests use is Azurite (from the npm registry;
recipe: shared/INFRA.md). This installs it into the cache once (idempotent: a cached
copy is kept), starts one the way the test session does (oidownload/testing/azurite.py),
writes and reads a blob with a signed request and checks that a wrong key is refused,
so that a server that cannot run fails CI here, by name."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import obstore
from obstore.store import AzureStore

from oidownload.testing import azurite


def main() -> int:
    try:
        binary = azurite.install()
    except Exception as exc:
        print(f"ci: Azurite: cannot install: {exc}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="oidownload-ci-azurite-") as d:
        server = azurite.start(Path(d))
        try:
            store = server.make_bucket("ci-check")
            obstore.put(store, "hello.txt", b"hello")
            got = bytes(obstore.get(store, "hello.txt").bytes())
            wrong = AzureStore("ci-check", account_name=azurite.ACCOUNT, account_key="QUJD" + azurite.KEY[4:],
                               endpoint=server.endpoint, client_options={"allow_http": True})
            try:
                obstore.put(wrong, "x.txt", b"x")
                refused = False
            except Exception:
                refused = True
        finally:
            server.stop()
    if got != b"hello" or not refused:
        print(f"ci: Azurite: read back {got!r}, wrong key refused: {refused}", file=sys.stderr)
        return 1
    print(f"ci: Azurite ({binary}) serves signed writes and refuses a wrong key")
    return 0


if __name__ == "__main__":
    sys.exit(main())
