import pytest

from learner.microbatch import cost, micro_batches, split_for_ranks


def test_micro_batches_cover_every_sample_once_in_length_order():
    lengths = [5, 1, 9, 3, 7, 2]
    mbs = micro_batches(lengths, max_samples=4)
    assert sorted(i for mb in mbs for i in mb) == list(range(6))
    assert mbs == [[1, 5, 3, 0], [4, 2]]


@pytest.mark.parametrize("packed", [True, False])
def test_token_budget_is_respected(packed):
    lengths = [5, 1, 9, 3, 7, 2, 4, 4, 8]
    mbs = micro_batches(lengths, max_samples=100, max_tokens=12, packed=packed)
    assert sorted(i for mb in mbs for i in mb) == list(range(len(lengths)))
    for mb in mbs:
        assert cost(lengths, mb, packed) <= 12
    # packed fills better than padded at the same budget
    if packed:
        assert len(mbs) <= len(micro_batches(lengths, max_samples=100, max_tokens=12, packed=False))


def test_oversized_sample_gets_its_own_micro_batch():
    assert micro_batches([50, 2, 3], max_samples=8, max_tokens=10, packed=True) == [[1, 2], [0]]


def test_split_for_ranks_balances_tokens():
    lengths = [10, 9, 8, 1, 1, 1, 1, 1]
    shares = split_for_ranks(lengths, 2)
    assert sorted(i for s in shares for i in s) == list(range(8))
    loads = [sum(lengths[i] for i in s) for s in shares]
    assert abs(loads[0] - loads[1]) <= 2
    with pytest.raises(ValueError, match="cannot be shared"):
        split_for_ranks([1], 2)
