"""Seeded few-shot episodes, following the reference protocol (TRX ``video_reader.py``, CLIP-FSAR).

An episode samples ``way`` classes of the split, then ``shot + query`` distinct videos of each
class (the first ``shot`` are support, the rest queries), and shuffles support and query
separately. Episode labels are ``0..way-1`` in class-sampling order; "real" labels are each
class's index in the split's sorted class list (they select text prompts).

The one deliberate difference from the references is the randomness: they draw from the global
``random``/``numpy`` state, so episode ``i`` depends on everything drawn before it. Here episode
``i`` comes from its own generator seeded with ``(seed, i)``, so it is the same whatever order,
process or DDP rank draws it: evaluation over 10,000 episodes is reproducible and can be split
across workers (``sampler.shard(rank, world_size)``) without changing the result.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from actdistill.data.records import DatasetIndex

__all__ = ["QUERIES_PER_CLASS", "Episode", "EpisodeSampler", "items_by_class"]

#: Queries per class of the two reference settings: 5 while training, 1 while testing.
QUERIES_PER_CLASS: dict[str, int] = {"train": 5, "test": 1}


@dataclass(frozen=True)
class Episode:
    """One episode: item ids (e.g. segment uids) and their labels, support and query each shuffled.

    ``classes`` lists the sampled classes in episode-label order (``classes[label]``).
    """

    index: int
    classes: tuple[Hashable, ...]
    support: tuple[Hashable, ...]
    support_labels: tuple[int, ...]
    support_real_labels: tuple[int, ...]
    query: tuple[Hashable, ...]
    query_labels: tuple[int, ...]
    query_real_labels: tuple[int, ...]

    @property
    def way(self) -> int:
        return len(self.classes)

    @property
    def shot(self) -> int:
        return len(self.support) // len(self.classes)

    def label_tensors(self) -> dict[str, torch.Tensor]:
        """The four label sequences as ``int64`` tensors, keyed as the few-shot heads' arguments."""
        return {
            "support_labels": torch.tensor(self.support_labels, dtype=torch.long),
            "query_labels": torch.tensor(self.query_labels, dtype=torch.long),
            "support_real_labels": torch.tensor(self.support_real_labels, dtype=torch.long),
            "query_real_labels": torch.tensor(self.query_real_labels, dtype=torch.long),
        }


def items_by_class(index: DatasetIndex, task: str = "class") -> dict[int, list[str]]:
    """``{label: [segment uid, ...]}`` of a dataset index, in segment order (unlabelled skipped)."""
    out: dict[int, list[str]] = {}
    for seg in index.segments:
        if task in seg.labels:
            out.setdefault(int(seg.labels[task]), []).append(seg.uid)
    return out


class EpisodeSampler:
    """Episodes of ``way`` classes x (``shot`` + ``query``) distinct items, deterministic per index.

    ``class_to_items`` maps each class of the split to its items (hashable ids; order matters
    for determinism, duplicates are dropped). ``classes`` is the split's class list that real
    labels index into; by default the sorted keys of ``class_to_items``. Pass it explicitly when
    some class of the split may have no item left (otherwise later real labels would shift).
    Classes with fewer than ``shot + query`` items are never sampled; how many were skipped is
    in ``skipped`` and reported once as a warning. ``num_episodes`` sets ``len`` and iteration.
    """

    def __init__(
        self,
        class_to_items: Mapping[Hashable, Sequence[Hashable]],
        way: int = 5,
        shot: int = 1,
        query: int = 1,
        seed: int = 0,
        num_episodes: int | None = None,
        classes: Sequence[Hashable] | None = None,
    ) -> None:
        if way < 1 or shot < 1 or query < 0:
            raise ValueError(f"need way >= 1, shot >= 1, query >= 0; got way={way}, shot={shot}, query={query}")
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if num_episodes is not None and num_episodes < 0:
            raise ValueError(f"num_episodes must be non-negative, got {num_episodes}")
        self.way, self.shot, self.query, self.seed = way, shot, query, int(seed)
        self.num_episodes = num_episodes
        if classes is None:
            try:
                classes = sorted(class_to_items)
            except TypeError:
                raise TypeError("class keys are not mutually sortable; pass classes= explicitly") from None
        self.classes: list[Hashable] = list(classes)
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("classes must not repeat")
        unknown = set(class_to_items) - set(self.classes)
        if unknown:
            raise ValueError(f"class_to_items has classes missing from classes: {sorted(map(str, unknown))[:5]}")
        self.real_label: dict[Hashable, int] = {c: i for i, c in enumerate(self.classes)}
        self.items: dict[Hashable, list[Hashable]] = {
            c: list(dict.fromkeys(class_to_items.get(c, ()))) for c in self.classes
        }
        need = shot + query
        self.eligible: list[Hashable] = [c for c in self.classes if len(self.items[c]) >= need]
        self.skipped: dict[Hashable, int] = {c: len(v) for c, v in self.items.items() if len(v) < need}
        if self.skipped:
            warnings.warn(
                f"{len(self.skipped)} of {len(self.classes)} classes have fewer than shot + query = {need} "
                "videos and are never sampled",
                stacklevel=2,
            )
        if len(self.eligible) < way:
            raise ValueError(
                f"only {len(self.eligible)} classes have at least {need} videos; a {way}-way episode needs {way}"
            )

    @classmethod
    def for_setting(
        cls, setting: str, class_to_items: Mapping[Hashable, Sequence[Hashable]], **options: Any
    ) -> EpisodeSampler:
        """The reference ``train`` (5 queries per class) or ``test`` (1 query per class) setting."""
        if setting not in QUERIES_PER_CLASS:
            raise ValueError(f"setting must be one of {sorted(QUERIES_PER_CLASS)}, got {setting!r}")
        if "query" in options:
            raise ValueError("for_setting fixes query; use EpisodeSampler(...) to choose it")
        return cls(class_to_items, query=QUERIES_PER_CLASS[setting], **options)

    @classmethod
    def from_index(cls, index: DatasetIndex, task: str = "class", **options: Any) -> EpisodeSampler:
        """Episodes over a dataset index: items are segment uids, real labels index
        ``index.classes[task]`` (so they match text prompts built from that list)."""
        n = len(index.classes.get(task, []))
        groups = items_by_class(index, task)
        if n == 0:
            n = max(groups, default=-1) + 1
        return cls(groups, classes=list(range(n)), **options)

    def episode(self, index: int) -> Episode:
        """Episode ``index``: a pure function of ``(seed, index)``."""
        if index < 0:
            raise IndexError(f"episode index must be non-negative, got {index}")
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(index)]))
        picked = [self.eligible[i] for i in rng.choice(len(self.eligible), size=self.way, replace=False)]
        support: list[tuple[Hashable, int, int]] = []
        query: list[tuple[Hashable, int, int]] = []
        for label, c in enumerate(picked):
            items, real = self.items[c], self.real_label[c]
            chosen = rng.choice(len(items), size=self.shot + self.query, replace=False)
            support.extend((items[i], label, real) for i in chosen[: self.shot])
            query.extend((items[i], label, real) for i in chosen[self.shot :])
        support = [support[i] for i in rng.permutation(len(support))]
        query = [query[i] for i in rng.permutation(len(query))]
        return Episode(
            index=int(index),
            classes=tuple(picked),
            support=tuple(s[0] for s in support),
            support_labels=tuple(s[1] for s in support),
            support_real_labels=tuple(s[2] for s in support),
            query=tuple(q[0] for q in query),
            query_labels=tuple(q[1] for q in query),
            query_real_labels=tuple(q[2] for q in query),
        )

    def shard(self, rank: int, world_size: int) -> range:
        """The episode indices of one of ``world_size`` workers (round robin over ``len(self)``)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
        return range(rank, len(self), world_size)

    def __getitem__(self, index: int) -> Episode:
        if self.num_episodes is not None and index >= self.num_episodes:
            raise IndexError(f"episode {index} of {self.num_episodes}")
        return self.episode(index)

    def __len__(self) -> int:
        if self.num_episodes is None:
            raise TypeError("this sampler has no num_episodes; draw episodes with episode(i)")
        return self.num_episodes

    def __iter__(self) -> Iterator[Episode]:
        return (self.episode(i) for i in range(len(self)))
