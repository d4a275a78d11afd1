"""distkm.io.stores: what a resumed store may hold of the writes a kill interrupted."""

import numpy as np
import zarr

from distkm.io.stores import chunks_done, create_store, discard_unfinished_writes, write_chunk
from tests.helpers import tree_md5


def test_the_debris_of_killed_chunk_writes_is_discarded_and_nothing_else(tmp_path):
    store = tmp_path / "s.zarr"
    create_store(store, n=6, n_features=4, chunk_rows=2, attrs={})
    rows = np.arange(24, dtype=np.uint8).reshape(6, 4)
    write_chunk(store, 0, rows[:2], np.zeros(2, np.uint8))
    write_chunk(store, 2, rows[4:], np.ones(2, np.uint8))
    before = tree_md5(store)
    # What zarr's LocalStore leaves of a write killed before its rename: KEY.<32 hex>.partial
    debris = [store / "images" / "c" / "1" / "0.0123456789abcdef0123456789abcdef.partial",
              store / "labels" / "c" / "1.fedcba9876543210fedcba9876543210.partial"]
    for path in debris:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a chunk")
    kept = store / "notes.partial"  # a name zarr never writes: not ours to remove
    kept.write_text("a user's file")
    discard_unfinished_writes(store)
    assert not any(path.exists() for path in debris) and kept.read_text() == "a user's file"
    kept.unlink()
    assert tree_md5(store) == before
    assert chunks_done(store).tolist() == [True, False, True]
    np.testing.assert_array_equal(zarr.open_group(store, mode="r")["images"][4:], rows[4:])
