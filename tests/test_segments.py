import jax.numpy as jnp
import numpy as np

from hrm.models.segments import document_starts, positions_in_segment


def test_documents_start_where_the_id_changes_but_never_at_position_zero():
    ids = jnp.asarray([[7, 7, 7, 2, 2, 9], [1, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(document_starts(ids), [[0, 0, 0, 1, 0, 1], [0, 0, 0, 0, 0, 0]])
    assert document_starts(None) is None


def test_positions_count_from_each_document_start():
    ids = jnp.asarray([[7, 7, 7, 2, 2, 9], [3, 3, 3, 3, 3, 3], [1, 2, 2, 2, 3, 3]])
    np.testing.assert_array_equal(
        positions_in_segment(ids), [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5], [0, 0, 1, 2, 0, 1]]
    )
