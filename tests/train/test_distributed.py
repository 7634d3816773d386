import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from astra.train.config import get_preset
from astra.train.distributed import DistInfo
from astra.train.trainer import Trainer

CONFIG = get_preset("astra-tiny").replace(model_overrides={"text_dim": 0, "text_len": 0}, steps=2, save_every=2)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        trainer = Trainer(CONFIG.replace(parallel="ddp"), out_dir, info=DistInfo(rank, world_size, rank), progress=False)
        before = torch.cat([p.detach().flatten() for _, p in trainer.trainable]).clone()
        trainer.fit()
        flat = torch.cat([p.detach().flatten() for _, p in trainer.trainable])
        gathered = [torch.empty_like(flat) for _ in range(world_size)]
        dist.all_gather(gathered, flat)
        if rank == 0:
            torch.save({"ranks": gathered, "before": before}, os.path.join(out_dir, "params.pt"))
    finally:
        dist.destroy_process_group()


def test_two_process_ddp_keeps_ranks_identical(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    result = torch.load(tmp_path / "params.pt")
    rank0, rank1 = result["ranks"]
    assert torch.equal(rank0, rank1)
    assert not torch.equal(rank0, result["before"])  # training moved the weights
    assert (tmp_path / "checkpoints" / "step-00000002.pt").exists()
