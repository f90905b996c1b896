from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actdistill.data.sampling import (
    TemporalSampler,
    dense_indices,
    epic_flow_index,
    is_epic_2018,
    map_frame_numbers,
    tsn_indices,
    uniform_indices,
)


def test_tsn_centres_at_test() -> None:
    out = tsn_indices(1, 80, 8, train=False, rng=np.random.default_rng(0))
    assert out.tolist() == [6, 16, 26, 36, 46, 56, 66, 76]


@given(start=st.integers(1, 500), length=st.integers(1, 400), t=st.integers(1, 16), seed=st.integers(0, 99),
       train=st.booleans())
def test_samplers_stay_in_range(start: int, length: int, t: int, seed: int, train: bool) -> None:
    stop = start + length - 1
    rng = np.random.default_rng(seed)
    for out in (tsn_indices(start, stop, t, train, rng), uniform_indices(start, stop, t, train, rng),
                dense_indices(start, stop, t, 2, train, rng)):
        assert out.shape == (t,)
        assert out.min() >= start and out.max() <= stop
        assert (np.diff(out) >= 0).all()


def test_uniform_matches_reference_protocol() -> None:
    # test mode: start=1, end=n-2, int(linspace)
    out = uniform_indices(1, 30, 8, train=False, rng=np.random.default_rng(0)) - 1
    assert out.tolist() == np.linspace(1, 28, 8).astype(int).tolist()
    # too short for the padded range: whole 0..n-1
    out = uniform_indices(1, 9, 8, train=False, rng=np.random.default_rng(0)) - 1
    assert out.tolist() == np.linspace(0, 8, 8).astype(int).tolist()
    # training jitter keeps end points within pad=min(5,(n-8)/2)
    rng = np.random.default_rng(1)
    for _ in range(50):
        out = uniform_indices(1, 40, 8, train=True, rng=rng) - 1
        assert 0 <= out[0] <= 5 and 34 <= out[-1] <= 39


def test_sampler_views_and_validation() -> None:
    s = TemporalSampler("tsn", 4, views=3)
    out = s(1, 40, train=False, rng=np.random.default_rng(0))
    assert out.shape == (3, 4) and len({tuple(r) for r in out}) == 3
    assert s(1, 40, train=True, rng=np.random.default_rng(0)).shape == (1, 4)
    assert TemporalSampler("dense", 4, stride=3, views=2)(1, 100, False, np.random.default_rng(0)).shape == (2, 4)
    with pytest.raises(ValueError, match="sampling mode"):
        TemporalSampler("random")
    with pytest.raises(ValueError, match="empty frame range"):
        s(10, 9, False, np.random.default_rng(0))


def test_epic_flow_mapping() -> None:
    assert is_epic_2018("P01_01") and not is_epic_2018("P01_101")
    rgb = np.array([1, 2, 3, 4, 5, 120])
    assert epic_flow_index(rgb, half_rate=True).tolist() == [1, 1, 2, 2, 3, 60]
    assert epic_flow_index(rgb, half_rate=True, num_flow_frames=50).tolist() == [1, 1, 2, 2, 3, 50]
    # 2020 videos: 1:1 with one fewer flow frame than RGB, clamped at the last flow frame
    assert epic_flow_index(np.array([1, 99, 100]), half_rate=False, num_flow_frames=99).tolist() == [1, 99, 99]
    assert map_frame_numbers(np.array([0, 5, 9]), "identity", 8).tolist() == [1, 5, 8]
    with pytest.raises(ValueError, match="unknown index map"):
        map_frame_numbers(rgb, "nope")
