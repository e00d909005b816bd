"""Turning cut times into clips: spans between cuts, long ones cut into equal pieces under the cap,
short ones dropped; fine cuts halfway between dissimilar samples."""

import numpy as np
import pytest

from megagoku.config.curate import SplitConfig
from megagoku.curation.split import Segment, fine_cuts, segments


def spans(items):
    return [(round(s.start, 3), round(s.end, 3)) for s in items]


def test_spans_between_cuts_with_the_short_ones_dropped():
    cfg = SplitConfig(min_clip_seconds=2.0, max_clip_seconds=10.0)
    kept, short = segments([5.0, 6.0, 12.0], 20.0, cfg)
    assert spans(kept) == [(0.0, 5.0), (6.0, 12.0), (12.0, 20.0)]
    assert spans(short) == [(5.0, 6.0)]


def test_long_scenes_become_equal_pieces_under_the_cap():
    cfg = SplitConfig(min_clip_seconds=2.0, max_clip_seconds=10.0)
    kept, _ = segments([], 25.0, cfg)
    assert spans(kept) == [(0.0, 8.333), (8.333, 16.667), (16.667, 25.0)]
    kept, _ = segments([], 20.0, cfg)  # exactly two caps: two pieces, not three
    assert spans(kept) == [(0.0, 10.0), (10.0, 20.0)]


def test_cuts_outside_the_video_or_repeated_are_ignored():
    cfg = SplitConfig(min_clip_seconds=1.0, max_clip_seconds=10.0)
    kept, short = segments([0.0, 4.0, 4.0, 9.0, 30.0], 9.0, cfg)
    assert spans(kept) == [(0.0, 4.0), (4.0, 9.0)] and short == []


def test_fine_cuts_fall_halfway_between_dissimilar_samples():
    times = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    similarity = np.array([0.95, 0.6, 0.9, 0.84])
    assert fine_cuts(times, similarity, 0.85) == [1.5, 3.5]
    assert fine_cuts(times, similarity, 0.5) == []


def test_segment_length():
    assert Segment(2.5, 7.0).seconds == pytest.approx(4.5)
