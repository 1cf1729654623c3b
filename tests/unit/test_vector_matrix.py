"""Serving reads pgvector columns as raw binary and decodes a whole column at once (retrieve.vector_matrix)."""

from __future__ import annotations

import numpy as np
import pytest
from pgvector import Vector

from recstack.stages.retrieve import RawVectorLoader, vector_matrix


def _wire(values: np.ndarray) -> bytes:
    """What Postgres sends for a vector in binary format (pgvector's own encoder)."""
    return Vector(values).to_binary()


def test_raw_binary_column_decodes_to_the_stored_floats_with_zeros_for_nulls() -> None:
    rng = np.random.default_rng(0)
    stored = rng.normal(size=(3, 64)).astype(np.float32)
    loader = RawVectorLoader(0)
    column = [loader.load(memoryview(_wire(stored[0]))), None, loader.load(_wire(stored[1])), _wire(stored[2])]
    out = vector_matrix(column, 64)
    np.testing.assert_array_equal(out[[0, 2, 3]], stored)
    np.testing.assert_array_equal(out[1], np.zeros(64, np.float32))
    assert out.dtype == np.float32


def test_vector_objects_and_text_still_decode() -> None:
    values = np.arange(4, dtype=np.float32)
    out = vector_matrix([Vector(values), "[0,1,2,3]", None], 4)
    np.testing.assert_array_equal(out, np.stack([values, values, np.zeros(4, np.float32)]))


def test_a_column_of_another_size_is_refused() -> None:
    with pytest.raises(ValueError, match="64 dimensions"):
        vector_matrix([_wire(np.ones(384, np.float32))], 64)


def test_an_empty_column_is_an_empty_matrix() -> None:
    assert vector_matrix([], 384).shape == (0, 384)
    assert vector_matrix([None, None], 64).shape == (2, 64)
