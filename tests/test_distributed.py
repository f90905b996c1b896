"""``from_main`` under a real two-rank gloo group: rank 0's result reaches every rank, and so does
its error (the other ranks would otherwise wait in the broadcast until the launcher's timeout)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from actdistill.config import ConfigError
from actdistill.data.records import DataError
from actdistill.engine.distributed import from_main
from tests.conftest import free_port


def _worker(rk: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rk), WORLD_SIZE="2",
                      LOCAL_RANK=str(rk))
    out = Path(root) / f"rank{rk}.txt"
    lines = [f"result {from_main(lambda: f'made by rank {rk}', 1.0)}"]
    for err in (ConfigError("study: another config"), DataError(Path("a.csv"), "bad row")):
        def fail(err: Exception = err) -> None:
            raise err

        try:
            from_main(fail, 1.0)
            lines.append("no error")
        except Exception as caught:  # the test records what each rank raised
            lines.append(f"{type(caught).__name__}: {caught}")
    out.write_text("\n".join(lines) + "\n")
    import torch.distributed as dist

    dist.destroy_process_group()


@pytest.mark.skipif(sys.platform != "linux", reason="gloo process group test")
def test_rank_zero_result_and_error_reach_every_rank(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    texts = [(tmp_path / f"rank{r}.txt").read_text().splitlines() for r in (0, 1)]
    assert texts[0] == texts[1], texts
    assert texts[0][0] == "result made by rank 0"
    assert texts[0][1] == "ConfigError: study: another config"
    assert texts[0][2].endswith("bad row") and "a.csv" in texts[0][2]
