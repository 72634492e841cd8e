"""Per-image cost of the storages: S3 (a moto server on loopback, or your own) vs the
local folder, measured alternately in the same run.

    python -m bench.storage [--images 300] [--repeat 3] [--size 64]
    python -m bench.storage --endpoint http://127.0.0.1:9000 --bucket kiln   # MinIO

Each side writes ``--images`` generated images through ``Storage.write_image`` (PNG
with the ``parameters`` chunk, sha256, atomic write or PUT: what a worker does per
image), then reads each back whole and through a 4 KiB range. The figures are ms per
image (median of ``--repeat`` runs) and the ratio s3 / local. Without ``--endpoint``
a ``python -m moto.server`` is started on a free loopback port: moto is a Python
emulator, so its figures bound the client's cost from above; a real store adds its
own network round trip (~1–20 ms per PUT on AWS within a region).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3

from pixelkiln import png
from pixelkiln.storage import LocalStorage, Storage
from pixelkiln.storage.s3 import S3Storage

PARAMETERS = "benchmark prompt\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64"


@contextlib.contextmanager
def _moto() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit("moto server did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def _image(size: int, seed: int) -> bytes:
    raw = bytes((seed * 7 + i) % 251 for i in range(size * size * 3))
    return png.encode_rgb(raw, size, size)


def _per_image(storage: Storage, images: list[bytes], run: int) -> tuple[float, float]:
    """(ms to write, ms to read back whole + one range) per image."""
    paths = [storage.image_path(run, "bench", i, 0) for i in range(len(images))]
    started = time.perf_counter()
    for path, data in zip(paths, images, strict=True):
        storage.write_image(path, data, PARAMETERS)
    written = time.perf_counter()
    for path in paths:
        storage.read(path)
        with storage.open(path, 16, 4096) as part:
            part.read()
    read = time.perf_counter()
    count = len(images)
    return (written - started) * 1000 / count, (read - written) * 1000 / count


def _measure(
    make: Callable[[], Storage], images: list[bytes], runs: list[tuple[float, float]]
) -> None:
    storage = make()
    try:
        runs.append(_per_image(storage, images, len(runs) + 1))
    finally:
        storage.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--endpoint", default="", help="an S3 endpoint (default: start moto)")
    parser.add_argument("--bucket", default="", help="with --endpoint: an existing bucket")
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    images = [_image(args.size, i) for i in range(args.images)]

    with contextlib.ExitStack() as stack:
        endpoint, bucket = args.endpoint, args.bucket
        if not endpoint:
            endpoint = stack.enter_context(_moto())
        prefix = f"bench-{secrets.token_hex(4)}"
        if not bucket:
            bucket = prefix
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
                Bucket=bucket
            )
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        local_runs: list[tuple[float, float]] = []
        s3_runs: list[tuple[float, float]] = []
        for _ in range(args.repeat):  # alternately: this machine is noisy
            _measure(lambda: LocalStorage(folder), images, local_runs)
            _measure(
                lambda: S3Storage(bucket=bucket, prefix=prefix, endpoint=endpoint),
                images,
                s3_runs,
            )
    local_write = statistics.median(r[0] for r in local_runs)
    local_read = statistics.median(r[1] for r in local_runs)
    s3_write = statistics.median(r[0] for r in s3_runs)
    s3_read = statistics.median(r[1] for r in s3_runs)
    size = len(images[0])
    print(
        f"images: {args.images} of {args.size}x{args.size} (~{size / 1024:.1f} KiB PNG), "
        f"median of {args.repeat}; S3 at {endpoint}{'' if args.endpoint else ' (moto)'}"
    )
    print(f"local write_image:       {local_write:8.3f} ms/image")
    print(f"s3 write_image (PUT):    {s3_write:8.3f} ms/image")
    print(f"ratio s3 / local write:  {s3_write / local_write:8.1f}")
    print(f"local read + range:      {local_read:8.3f} ms/image")
    print(f"s3 read + range (2 GET): {s3_read:8.3f} ms/image")
    print(f"ratio s3 / local read:   {s3_read / local_read:8.1f}")


if __name__ == "__main__":
    main()
