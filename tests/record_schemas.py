"""Record the statements a new database is made by (``pixelkiln/db/schemas/*.json``)
again, after a new migration: ``python -m tests.record_schemas``.

On an SQLite file and on a fresh schema or database of the test PostgreSQL and MariaDB
servers (``KILN_TEST_POSTGRES``, ``KILN_TEST_MYSQL``; made and dropped as the suite's
own, :class:`tests.conftest.Scratch`). tests/integration/test_fresh_schema.py fails until
the files hold what the migrations write.
"""

from __future__ import annotations

import sys
import tempfile

from pixelkiln.db import fresh
from tests.conftest import _SCRATCH


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        urls = [(f"sqlite:///{folder}/kiln.db", None)]
        urls += [_SCRATCH[kind].create() for kind in ("postgres", "mysql")]
        for url, drop in urls:
            try:
                kind, found = fresh.record(url)
            finally:
                if drop is not None:
                    drop()
            path = fresh.write(kind, found)
            print(f"{path}: {len(found)} statements", file=sys.stderr)
    for scratch in _SCRATCH.values():
        scratch.dispose()


if __name__ == "__main__":
    main()
