"""SLURM task variables -> torch.distributed ranks (pure functions; the real path is test_slurm)."""

from __future__ import annotations

import pytest
from helpers.deps import needs

from phasedsft.distributed import first_host, slurm_ranks


def test_single_task_or_torchrun_leave_the_environment_alone():
    assert slurm_ranks({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) == {}
    assert slurm_ranks({"SLURM_NTASKS": "8", "RANK": "3"}) == {}  # torchrun inside the job wins
    assert slurm_ranks({}) == {}


def test_ranks_from_a_two_node_job():
    env = {
        "SLURM_NTASKS": "16",
        "SLURM_PROCID": "9",
        "SLURM_LOCALID": "1",
        "SLURM_NTASKS_PER_NODE": "8(x2)",
        "SLURM_JOB_NODELIST": "gpu[017-018]",
        "SLURM_JOB_ID": "123456",
    }
    got = slurm_ranks(env)
    assert got["RANK"] == "9" and got["LOCAL_RANK"] == "1" and got["WORLD_SIZE"] == "16"
    assert got["LOCAL_WORLD_SIZE"] == "8"
    assert got["MASTER_ADDR"] == "gpu017"
    assert got["MASTER_PORT"] == str(20000 + 123456 % 20000)  # same on every task of the job


def test_first_host_of_common_node_lists():
    assert first_host("node7") == "node7"
    assert first_host("gpu[003-005,010]") == "gpu003"
    assert first_host("a1,b[2-3]") == "a1"


def test_a_job_ending_in_a_plain_error_tears_down_its_process_group(tmp_path):
    # left to interpreter exit, a rank could abort (SIGABRT) in gloo's threads instead of
    # exiting with its code 2 (seen in CI: "terminate called without an active exception")
    import pytest
    import torch.distributed as dist

    from phasedsft.cli import plain_errors
    from phasedsft.records import DataError

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)

    @plain_errors
    def job() -> None:
        assert dist.is_initialized()
        raise DataError("data.jsonl:3: missing field 'output'")

    with pytest.raises(SystemExit) as e:
        job()
    assert e.value.code == 2 and not dist.is_initialized()


@pytest.mark.integration  # DeepSpeed's first init_distributed on a fresh machine takes ~45 s
def test_deepspeed_lets_go_of_the_destroyed_groups_before_the_interpreter_exits(tmp_path):
    # a ZeRO-3 rank that had finished aborted at exit now and then (SIGABRT in CI): DeepSpeed's
    # globals kept the destroyed gloo groups alive until finalization
    import torch.distributed as dist

    needs("deepspeed")
    from deepspeed.comm import comm
    from deepspeed.utils import groups

    from phasedsft.cli import plain_errors

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    comm.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    groups._WORLD_GROUP = dist.new_group([0])
    groups._EXPERT_PARALLEL_GROUP["ep_size_1"] = dist.new_group([0])
    held = [comm.cdb, groups._WORLD_GROUP]

    @plain_errors
    def job() -> None:
        assert comm.cdb is not None

    job()
    assert not dist.is_initialized()
    assert comm.cdb is None and groups._WORLD_GROUP is None
    assert groups._EXPERT_PARALLEL_GROUP == {}
    assert all(x is not None for x in held)  # what the test holds itself stays
