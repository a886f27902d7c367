"""The emulator's pure parts, table-driven: metadata rules, token bucket, duration format."""

from __future__ import annotations

import pytest

from bulk_update.emulator.limits import TokenBucket, format_duration
from bulk_update.emulator.store import ApiError, ObjectStore, check_map, check_metadata, preload_id


@pytest.mark.parametrize(
    ("metadata", "existing", "code"),
    [
        ({"a": "b"}, None, None),
        ({}, None, None),
        ({"k" * 64: "v" * 512}, None, None),
        ({"k" * 65: "v"}, None, "string_above_max_length"),
        ({"k": "v" * 513}, None, "string_above_max_length"),
        ({"k": "😀" * 512}, None, None),
        ({"": "v"}, None, "empty_string"),
        ({"k": 1}, None, "invalid_type"),
        ({"k": True}, None, "invalid_type"),
        ({"k": None}, None, "invalid_type"),
        (["a"], None, "invalid_type"),
        ({f"k{i}": "v" for i in range(16)}, None, None),
        ({f"k{i}": "v" for i in range(17)}, None, "object_above_max_properties"),
        ({"new": "v"}, {f"k{i}": "v" for i in range(16)}, "object_above_max_properties"),
        ({"k0": "w"}, {f"k{i}": "v" for i in range(16)}, None),
    ],
)
def test_check_metadata(
    metadata: object, existing: dict[str, str] | None, code: str | None
) -> None:
    if code is None:
        merged = check_metadata(metadata, existing)
        assert isinstance(metadata, dict)
        assert merged == {**(existing or {}), **metadata}
    else:
        with pytest.raises(ApiError) as info:
            check_metadata(metadata, existing)
        assert info.value.status == 400
        assert info.value.code == code
        assert set(info.value.body()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0, "0ms"), (0.02, "20ms"), (0.0201, "21ms"), (1.0, "1s"), (1.5, "1.5s"),
     (59.0, "59s"), (60.0, "1m0s"), (360.0, "6m0s"), (61.25, "1m1.25s")],
)  # fmt: skip
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_bucket_holds_one_seconds_share_and_refills() -> None:
    bucket = TokenBucket(rpm=600, now=0.0)  # 10 a second
    admitted = [bucket.admit(0.0).allowed for _ in range(12)]
    assert admitted == [True] * 10 + [False] * 2
    denied = bucket.admit(0.0)
    assert denied.remaining == 0
    assert denied.retry_after_seconds == pytest.approx(0.1)
    assert denied.headers()["retry-after"] == "1"
    assert denied.headers()["retry-after-ms"] == "100"
    assert bucket.admit(0.1).allowed
    assert not bucket.admit(0.1).allowed
    full = bucket.admit(100.0)
    assert full.allowed
    assert full.remaining == 9
    assert full.headers()["x-ratelimit-reset-requests"] == "100ms"
    assert "retry-after" not in full.headers()


def test_bucket_sustains_exactly_its_rate() -> None:
    bucket = TokenBucket(rpm=120, now=0.0)
    # Ask every 10 ms for 60 s: admitted = initial burst (2) + 60 s x 2/s.
    admitted = sum(bucket.admit(t / 100).allowed for t in range(6000))
    assert admitted == 2 + 119


def test_slow_rates_still_admit_one_at_a_time() -> None:
    bucket = TokenBucket(rpm=30, now=0.0)  # one every 2 s
    assert bucket.admit(0.0).allowed
    assert not bucket.admit(1.9).allowed
    assert bucket.admit(2.0).allowed


def test_preload_ids_look_real_and_are_stable() -> None:
    ids = [preload_id(i) for i in range(1000)]
    assert len(set(ids)) == 1000
    assert all(len(i) == 53 and i.startswith("conv_") for i in ids)
    # Stable everywhere: the same in every process and version (an input built for a
    # preloaded emulator names the conversations another process holds), not a random ID.
    assert preload_id(0) == "conv_6c1b35cf411efba467901ac5685f98edb0815201f3e22ad6"
    assert preload_id(7) == "conv_79c2bd592e4876864447029bb01d6d6699b404fe0e2a9e38"


@pytest.mark.parametrize(
    ("attributes", "code"),
    [
        ({"n": 12, "f": 0.5, "ok": False, "s": "x"}, None),
        ({"n": -(2**70)}, None),  # the emulator keeps what JSON parsed; the job bounds integers
        ({"k": None}, "invalid_type"),
        ({"k": {"a": "b"}}, "invalid_type"),
        ({"k": [1]}, "invalid_type"),
        ({"k": float("nan")}, "invalid_value"),
        ({"k": float("inf")}, "invalid_value"),
        ({"k": "v" * 513}, "string_above_max_length"),
        ({f"k{i}": i for i in range(17)}, "object_above_max_properties"),
        (None, "invalid_type"),
    ],
)
def test_check_map_of_attributes(attributes: object, code: str | None) -> None:
    if code is None:
        assert check_map(attributes, name="attributes", typed=True) == attributes
        with pytest.raises(ApiError):  # the same map as metadata: strings only
            check_map(attributes, name="metadata")
    else:
        with pytest.raises(ApiError) as info:
            check_map(attributes, name="attributes", typed=True)
        assert info.value.code == code
        assert (info.value.param or "").startswith("attributes")


def test_pages_follow_after_in_either_order() -> None:
    store = ObjectStore(lambda ids: ApiError(404, "no"))
    store.preload(((f"id{i}",), {"even": str(i % 2 == 0)}, None) for i in range(7))
    first = store.page(limit=3)
    assert ([item.id for item in first.items], first.has_more) == (["id0", "id1", "id2"], True)
    last = store.page(after="id5", limit=3)
    assert ([item.id for item in last.items], last.has_more) == (["id6"], False)
    back = store.page(after="id5", limit=3, descending=True)
    assert [item.id for item in back.items] == ["id4", "id3", "id2"]
    even = store.page(limit=2, match=lambda item: item.metadata["even"] == "True")
    assert ([item.id for item in even.items], even.has_more) == (["id0", "id2"], True)
    exact = store.page(after="id3", limit=3)  # exactly the rest: no more
    assert ([item.id for item in exact.items], exact.has_more) == (["id4", "id5", "id6"], False)
    with pytest.raises(ApiError) as info:
        store.page(after="nope")
    assert info.value.param == "after"
