"""Which Blosc codec for image stores? Size on disk against decode speed, on augmented MNIST.

Run by hand:  .venv/bin/python benchmarks/codecs.py [STORE]   (default: a 200k-row augmented store,
generated if missing). Every Lloyd iteration re-reads the store, so the read (decode) time per
row matters more than the size; the write time matters once.
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

import zarr

from distkm.io.stores import blosc_compressor

CANDIDATES = ["lz4:1", "lz4:5", "lz4:9", "lz4hc:3", "lz4hc:5", "lz4hc:9", "blosclz:5", "zstd:1", "zstd:3",
              "zstd:1:bitshuffle",
              "lz4:5:bitshuffle", "zlib:1"]


def main(store):
    images = zarr.open_array(Path(store) / "images", mode="r")
    data = images[...]
    raw = data.nbytes
    print(f"{store}: {data.shape[0]:,} rows x {data.shape[1]}, {raw / 2**20:.0f} MiB raw, "
          f"chunks of {images.chunks[0]:,} rows")
    print(f"{'codec':20s} {'MiB':>7s} {'ratio':>6s} {'write s':>8s} {'read s':>7s} {'read MB/s':>9s}")
    with tempfile.TemporaryDirectory() as tmp:
        for spec in CANDIDATES:
            path = Path(tmp) / spec.replace(":", "_")
            z = zarr.create_array(path, shape=data.shape, chunks=images.chunks, dtype=data.dtype,
                                  compressors=blosc_compressor(spec))
            t = time.perf_counter()
            z[:] = data
            write = time.perf_counter() - t
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            reads = []
            for _ in range(3):
                t = time.perf_counter()
                for start in range(0, data.shape[0], images.chunks[0]):  # chunk by chunk, as the workers read
                    z[start:start + images.chunks[0]]
                reads.append(time.perf_counter() - t)
            read = statistics.median(reads)
            print(f"{spec:20s} {size / 2**20:7.1f} {raw / size:6.2f} {write:8.2f} {read:7.2f} {raw / read / 1e6:9.0f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/aug200k.zarr")
