import numpy as np
import pytest

from replay.sum_tree import SumTree


def test_total_and_prefix_search_find_the_leaf_owning_each_interval():
    tree = SumTree(5)  # not a power of two: padded leaves stay zero
    tree.set(np.arange(5), np.array([1.0, 0.0, 2.0, 3.0, 4.0]))
    assert tree.total == pytest.approx(10.0)
    # Leaf i owns [sum(leaves[:i]), sum(leaves[:i+1])); the zero leaf 1 owns nothing.
    targets = np.array([0.0, 0.999, 1.0, 2.5, 2.999, 3.0, 5.999, 6.0, 9.999])
    np.testing.assert_array_equal(tree.find(targets), [0, 0, 2, 2, 2, 3, 3, 4, 4])


def test_updates_recompute_ancestors_and_repeated_indices_take_the_last_value():
    tree = SumTree(8)
    tree.set(np.arange(8), np.ones(8))
    tree.set(np.array([3, 3, 6]), np.array([5.0, 2.0, 0.0]))
    assert tree.total == pytest.approx(8 - 1 + 2 - 1)
    np.testing.assert_allclose(tree.get(np.array([3, 6])), [2.0, 0.0])
    assert 6 not in tree.find(np.linspace(0, tree.total, 1000, endpoint=False))


def test_set_all_matches_incremental_sets():
    rng = np.random.default_rng(0)
    values = rng.random(1000)
    a, b = SumTree(1000), SumTree(1000)
    a.set_all(values)
    for chunk in np.array_split(np.arange(1000), 7):
        b.set(chunk, values[chunk])
    targets = rng.random(500) * a.total
    np.testing.assert_array_equal(a.find(targets), b.find(targets))
    assert a.total == pytest.approx(values.sum())


def test_boundary_targets_never_land_on_a_zero_leaf():
    tree = SumTree(4)
    tree.set(np.arange(4), np.array([0.1, 0.2, 0.0, 0.0]))
    found = tree.find(np.array([0.0, tree.total, np.nextafter(tree.total, 0)]))
    assert set(found) <= {0, 1}


def test_rejects_negative_or_non_finite_leaves():
    tree = SumTree(4)
    with pytest.raises(ValueError):
        tree.set(np.array([0]), np.array([-1.0]))
    with pytest.raises(ValueError):
        tree.set(np.array([0]), np.array([np.nan]))


def test_a_dense_batch_refreshes_the_same_tree_as_sparse_batches_do():
    """A batch over 1/64 of the leaves takes the whole-level path; the tree must be bit-identical."""
    rng = np.random.default_rng(1)
    dense, sparse = SumTree(4096), SumTree(4096)
    start = rng.random(4096)
    dense.set_all(start)
    sparse.set_all(start)
    indices = rng.integers(0, 4096, 1000)  # repeats included: the last value wins on both paths
    values = rng.random(1000)
    dense.set(indices, values)  # 1000 * 64 >= 4096: dense
    for part in np.array_split(np.arange(1000), 1000 // 50):  # 50 * 64 < 4096: sparse
        sparse.set(indices[part], values[part])
    np.testing.assert_array_equal(dense._tree, sparse._tree)
    targets = rng.random(500) * dense.total
    np.testing.assert_array_equal(dense.find(targets), sparse.find(targets))
