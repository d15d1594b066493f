import numpy as np

from replay import keys


def test_keys_round_trip_shard_slot_generation_at_the_limits():
    slots = np.array([0, 1, keys.MAX_CAPACITY - 1])
    generations = np.array([1, keys.GENERATION_MASK, keys.GENERATION_MASK + 2])  # the last wraps to 1
    packed = keys.make_keys(keys.MAX_SHARDS - 1, slots, generations)
    assert packed.dtype == np.uint64
    shard, slot, generation = keys.split_keys(packed)
    np.testing.assert_array_equal(shard, keys.MAX_SHARDS - 1)
    np.testing.assert_array_equal(slot, slots)
    np.testing.assert_array_equal(generation, [1, keys.GENERATION_MASK, 1])
    np.testing.assert_array_equal(keys.shard_of(packed), shard)
