import pytest

from phasedsft.jobs import subsample
from phasedsft.records import DataError, Example

EXAMPLES = [Example(str(i), "q", "", "a") for i in range(100)]


def test_subsample_is_seeded_ordered_and_sized():
    a = subsample(EXAMPLES, 30, seed=0)
    assert len(a) == 30 and a == subsample(EXAMPLES, 30, seed=0)
    assert a != subsample(EXAMPLES, 30, seed=1)
    assert [int(e.id) for e in a] == sorted(int(e.id) for e in a)  # original order kept
    assert subsample(EXAMPLES, None, 0) == EXAMPLES and subsample(EXAMPLES, 500, 0) == EXAMPLES
    with pytest.raises(DataError, match="max_examples must be positive"):
        subsample(EXAMPLES, 0, 0)
