"""While the rows are sent the cyclic collector runs less often (``pipeline._fewer_collections``),
and as before once they are: a caller's own setting (the Airflow worker's, a library user's)
is given back, and never lowered."""

from __future__ import annotations

import gc

import pytest

from bulk_update.pipeline import SENDING_GC_THRESHOLD, _fewer_collections


@pytest.mark.parametrize("first", [700, 50_000])
def test_the_threshold_is_raised_while_sending_and_given_back(first: int) -> None:
    before = gc.get_threshold()
    gc.set_threshold(first, 11, 12)
    try:
        with _fewer_collections():
            assert gc.get_threshold() == (max(first, SENDING_GC_THRESHOLD), 11, 12)
        assert gc.get_threshold() == (first, 11, 12)
        with pytest.raises(RuntimeError), _fewer_collections():
            raise RuntimeError("the run failed")
        assert gc.get_threshold() == (first, 11, 12)
    finally:
        gc.set_threshold(*before)
