from __future__ import annotations

import importlib
import inspect

import pytest

from actdistill.data.datasets import DATASETS, get_dataset
from actdistill.data.modalities.base import READERS


def test_every_dataset_loader_resolves() -> None:
    assert {"epic_kitchens_100", "synthetic", "ssv2", "video_folder", "fewshot", "generic"} <= set(DATASETS.names())
    for name in DATASETS.names():
        spec = get_dataset(name)
        module, func = spec.loader.split(":")
        fn = getattr(importlib.import_module(module), func)
        params = inspect.signature(fn).parameters
        assert "root" in params and "split" in params, name
        assert spec.annotations_arg in params, name


def test_unknown_names_suggest() -> None:
    with pytest.raises(KeyError, match="did you mean 'ssv2'"):
        get_dataset("ssv3")
    import actdistill.data.modalities  # noqa: F401

    assert set(READERS.names()) == {"rgb", "flow", "audio", "depth", "boxes", "imu"}


def test_unknown_adapter_option_is_an_error(epic_root) -> None:
    with pytest.raises(ValueError, match="has no option"):
        get_dataset("epic_kitchens_100").load(epic_root, "train", framez="tar")
