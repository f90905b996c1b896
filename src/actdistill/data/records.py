"""Typed records shared by every dataset adapter and modality reader.

An adapter turns an official release into a list of :class:`Segment` records; a segment says
*where* each of its modalities lives (:class:`Source`) and which frames it spans, and nothing is
decoded until a reader is asked for specific frame numbers. Keeping the record this small is what
lets one temporal sampler and one spatial transform serve every dataset and every modality.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Bad input. The message always names the file and says what is wrong with it."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self) -> tuple[type[DataError], tuple[str, str]]:
        # pickled with its two arguments (the default would pass the one message): data-loader
        # workers and torch.distributed send it between processes
        return (type(self), (self.path, self.problem))


@dataclass(frozen=True)
class Problem:
    """One thing found wrong while indexing or reading data (reported, never fatal by itself)."""

    path: str
    message: str
    # missing | unreadable | malformed | unknown_label | empty (adapters, readers);
    # no_modality | eval_only_label (the job's data report, actdistill.data.report)
    kind: str = "unreadable"

    @classmethod
    def from_error(cls, err: DataError, kind: str = "unreadable") -> Problem:
        return cls(err.path, err.problem, kind)

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Source:
    """Where one modality of one video lives and how to address its frames.

    ``kind`` selects the reader's decoding path, e.g. ``frames`` (a folder of images), ``tar``
    (the same inside a tar archive), ``video`` (a container file decoded with PyAV), ``uv_frames``
    (optical flow as u/ and v/ image folders), ``wav``/``video`` for audio, ``png16`` for depth,
    ``boxes_json``, ``imu_csv``. ``template`` formats a 1-based frame number into a file name.
    ``index_map`` names how a segment's frame numbers (in the RGB numbering) translate to this
    source's own numbering: ``identity``, ``epic_flow_half`` (2018 EPIC videos) or
    ``epic_flow_full`` (2020 EPIC videos). ``num_frames`` is the number of frames the source has
    when known (used to clamp), ``fps`` the rate of its numbering.
    """

    kind: str
    path: str
    template: str = "frame_{:010d}.jpg"
    index_map: str = "identity"
    num_frames: int | None = None
    fps: float | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Segment:
    """One labelled (or unlabelled) stretch of one video: the unit a dataset yields.

    Frame numbers are the dataset's own file numbers in the RGB numbering, inclusive on both
    ends (EPIC's ``start_frame``/``stop_frame``; 1..n for a whole extracted video). ``fps`` is the
    rate of that numbering, used to turn frame numbers into seconds for audio and IMU.
    """

    uid: str
    video_id: str
    start_frame: int
    stop_frame: int
    fps: float
    labels: dict[str, int] = field(default_factory=dict)
    sources: dict[str, Source] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return self.stop_frame - self.start_frame + 1

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.sources)


@dataclass
class DatasetIndex:
    """What an adapter returns for one split: segments, class names per task, problems found.

    ``rows_read``: how many annotation rows (or listed videos) of the split the adapter read, the
    good and the bad; ``rows_read - len(segments)`` were dropped. ``None`` where an adapter does not
    count them. Why: without it a job cannot say that a 40-clip test set became 30."""

    name: str
    split: str
    segments: list[Segment]
    classes: dict[str, list[str]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    rows_read: int | None = None

    @property
    def rows_dropped(self) -> int | None:
        """Rows read but not turned into a segment (``None`` when the adapter did not count)."""
        return None if self.rows_read is None else max(0, self.rows_read - len(self.segments))

    def modality_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for seg in self.segments:
            for m in seg.sources:
                counts[m] = counts.get(m, 0) + 1
        return counts
