"""Would zero-filling segments ahead of the data make durable writes cheaper?

A durable stream (one writer: a 96 KiB O_DIRECT write, then fdatasync, again and again,
about what a shard writes per sync at 200 MB/s) is timed in five setups:

- append: into a fresh file, each write extending it (a fresh segment today);
- overwrite: over a file written before (a recycled segment);
- frontier CHUNK: into a fresh file that another thread zero-fills CHUNK at a time (write,
  then fdatasync) a few MiB ahead of the writer, which never writes past the filled end;
- spare CHUNK: over a file written before, while another thread zero-fills a second file
  CHUNK at a time at the writer's pace (the next segment prepared in the background).

Run it on the device under test, pinned as a shard is:
    taskset -c 1 python3 bench/scripts/segment_prefill.py --dir DIR [--bytes N] [--rounds R]
It prints p50/p90/p99/p99.9 of the writer's write+fdatasync per setup and round.
"""

import argparse
import mmap
import os
import threading
import time

WRITE = 96 << 10
AHEAD = 8 << 20


def open_direct(path):
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)


def write_zeros(fd, size):
    block = mmap.mmap(-1, 1 << 20)
    for i in range(size >> 20):
        os.pwrite(fd, block, i << 20)
    os.fdatasync(fd)


class Filler:
    """Zero-fills `fd` CHUNK at a time, at most AHEAD past the writer's position."""

    def __init__(self, fd, chunk, limit):
        self.fd, self.chunk, self.limit = fd, chunk, limit
        self.position = 0
        self.filled = 0
        self.stopped = False
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def run(self):
        zeros = mmap.mmap(-1, self.chunk)
        while True:
            with self.changed:
                while not self.stopped and (
                    self.filled - self.position >= AHEAD or self.filled >= self.limit
                ):
                    self.changed.wait(0.01)
                if self.stopped:
                    return
                start = self.filled
            os.pwrite(self.fd, zeros, start)
            os.fdatasync(self.fd)
            with self.changed:
                self.filled = start + self.chunk
                self.changed.notify_all()

    def wait_filled(self, end):
        with self.changed:
            while self.filled < min(end, self.limit):
                self.changed.wait()

    def advance(self, position):
        with self.changed:
            self.position = position
            self.changed.notify_all()

    def stop(self):
        with self.changed:
            self.stopped = True
            self.changed.notify_all()
        self.thread.join()


def run(directory, setup, chunk, size):
    path = os.path.join(directory, "prefill-data")
    spare_path = os.path.join(directory, "prefill-spare")
    for stale in (path, spare_path):
        if os.path.exists(stale):
            os.remove(stale)
    fd = open_direct(path)
    filler, spare_fd = None, None
    if setup in ("overwrite", "spare"):
        write_zeros(fd, size)
    if setup == "frontier":
        filler = Filler(fd, chunk, size)
        filler.wait_filled(AHEAD)
    if setup == "spare":
        spare_fd = open_direct(spare_path)
        filler = Filler(spare_fd, chunk, size)
    data = mmap.mmap(-1, WRITE)
    data.write(b"x" * WRITE)
    latencies = []
    position = 0
    end = size - AHEAD if setup == "frontier" else size
    while position + WRITE <= end:
        if setup == "frontier":
            filler.wait_filled(position + WRITE)
        start = time.perf_counter()
        os.pwrite(fd, data, position)
        os.fdatasync(fd)
        latencies.append(time.perf_counter() - start)
        position += WRITE
        if filler:
            filler.advance(position)
    if filler:
        filler.stop()
    os.close(fd)
    os.remove(path)
    if spare_fd is not None:
        os.close(spare_fd)
        os.remove(spare_path)
    latencies.sort()
    return [round(latencies[int(len(latencies) * q)] * 1e6) for q in (0.5, 0.9, 0.99, 0.999)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--bytes", type=int, default=256 << 20)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    setups = [
        ("append", 0),
        ("overwrite", 0),
        ("frontier", 256 << 10),
        ("frontier", 1 << 20),
        ("frontier", 4 << 20),
        ("spare", 256 << 10),
        ("spare", 1 << 20),
    ]
    for round_number in range(args.rounds):
        for setup, chunk in setups:
            name = setup + (f" {chunk >> 10} KiB" if chunk else "")
            p50, p90, p99, p999 = run(args.dir, setup, chunk, args.bytes)
            print(
                f"round {round_number} {name:<18} write+fdatasync us "
                f"p50 {p50} p90 {p90} p99 {p99} p99.9 {p999}",
                flush=True,
            )


if __name__ == "__main__":
    main()
