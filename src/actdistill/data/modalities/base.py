"""The contract every modality reader follows.

A reader decodes one modality of one segment at frame numbers chosen by the temporal sampler
(once per sample, shared by all modalities). It returns a float tensor whose first dimension is
the number of requested frame numbers; spatial readers return ``[N, C, H, W]`` at the source's
native resolution so that one shared spatial transform (same crop, same flip) can be applied to
every spatial modality afterwards. Readers raise :class:`~actdistill.data.records.DataError`
naming the file on bad input and never return fabricated data.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from actdistill.data.records import Problem, Segment, Source
from actdistill.registry import Registry

READERS: Registry[ModalityReader] = Registry(
    "modality reader", contract=lambda obj: reader_problem(obj),
    what="a reader is a ModalityReader subclass whose read(source, frames, segment) returns a float tensor "
    "[len(frames), ...]; its constructor's keyword arguments are the data.readers.<modality> options",
)


def modality_kind(name: str) -> str:
    """The kind of a modality name: ``"imu:acc"`` -> ``"imu"``, ``"rgb"`` -> ``"rgb"``.

    A named modality ``<kind>:<name>`` (two IMUs of one watch, a second microphone) is read by the
    kind's reader and encoded by the kind's encoder, but has its own encoder weights, presence and
    place in the modality subsets, so that each sensor can drop out on its own.
    """
    kind, sep, rest = name.partition(":")
    if sep and (not kind or not rest):
        raise ValueError(f"modality {name!r}: a named modality is written <kind>:<name>, e.g. imu:acc")
    return kind


def options_for(table: Mapping[str, Any], name: str) -> Any:
    """``table[name]``, else the entry of ``name``'s kind (``{}`` when neither exists).

    How per-modality settings (``data.readers``, ``*.model.encoders``) reach a named modality:
    ``imu:acc`` uses its own entry when it has one and otherwise its kind's (``imu``), whole, not
    merged, so that an entry always reads as the complete setting of the modalities it serves.
    """
    if name in table:
        return table[name]
    return table.get(modality_kind(name), {})


def selects(names: Sequence[str], modality: str) -> bool:
    """Whether a list of modalities in a config (``teacher.fit_unimodal``) covers ``modality``:
    by its name, or by its kind (``imu`` covers ``imu:acc`` and ``imu:gyro``), so that the defaults,
    written in kinds, keep applying to named modalities."""
    return modality in names or modality_kind(modality) in names


def build_reader(name: str, options: Mapping[str, Any] | None = None) -> ModalityReader:
    """The reader of modality ``name`` (its kind's reader class) with ``options``."""
    import actdistill.data.modalities  # noqa: F401  (registers the readers)

    kind = modality_kind(name)
    opts = dict(options or {})
    check_reader_options(name, opts)
    return READERS.build(kind, **opts)


def check_reader_options(name: str, options: Mapping[str, Any], where: str = "data.readers") -> None:
    """A ``ConfigError`` naming ``<where>.<name>.<option>`` and the reader's options when ``options``
    holds one its kind's reader does not take, instead of a ``TypeError`` from its constructor;
    cheap, so jobs check every modality at start, before anything is decoded or trained."""
    import inspect

    import actdistill.data.modalities  # noqa: F401  (registers the readers)
    from actdistill.config import ConfigError

    kind = modality_kind(name)
    if kind not in READERS:
        raise ConfigError(f"modality {name!r}: no reader for kind {kind!r}; known: {', '.join(READERS.names())}")
    params = inspect.signature(READERS.get(kind)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    known = [p for p in params if p != "self"]
    for key in options:
        if key not in known:
            raise ConfigError(f"{where}.{name}.{key}: unknown option of the {kind} reader; "
                              f"it takes {', '.join(known) or 'no options'}")


class ModalityReader(ABC):
    """Decode one modality. Subclasses set ``modality`` and whether the spatial transform applies."""

    modality: str = ""
    spatial: bool = True

    @abstractmethod
    def read(self, source: Source, frames: np.ndarray, segment: Segment) -> torch.Tensor:
        """Decode the frames numbered ``frames`` (1-D int array, the segment's RGB numbering)."""

    def check(self, source: Source) -> Problem | None:
        """A cheap existence check for ``data summary``: the problem, or ``None`` if it looks fine."""
        if not Path(source.path).exists():
            return Problem(source.path, f"{self.modality} source not found", "missing")
        return None


def reader_problem(obj: Any) -> str | None:
    """What is wrong with registering ``obj`` as a modality reader (``None``: nothing)."""
    if not (isinstance(obj, type) and issubclass(obj, ModalityReader)):
        what = f"{obj.__module__}.{obj.__qualname__}" if isinstance(obj, type) else repr(obj)
        return f"{what} is not a subclass of actdistill.data.modalities.base.ModalityReader"
    if inspect.isabstract(obj):
        return f"{obj.__name__} does not define {', '.join(sorted(obj.__abstractmethods__))}"
    return None
