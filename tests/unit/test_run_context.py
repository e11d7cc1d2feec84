"""The run context reads a run's secrets once: a Prefect block is an API call, and a run's
tasks and threads ask for the same client many times."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from pdata_sync.base.config import ClinicConfig
from pdata_sync.pipeline.context import RunContext


class CountingSecrets:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def value(self, block_name, setting, env):
        self.asked.append(setting)
        return "pw"

    def aws_keys(self, s3):
        self.asked.append("aws")
        return None


def config(tmp_path) -> ClinicConfig:
    return ClinicConfig.model_validate(
        {
            "clinic_id": "c1",
            "pdata_root": str(tmp_path),
            "database": {"url": f"sqlite:///{tmp_path / 'sidexis.db'}", "schema": None},
            "resolver": {"url": "http://127.0.0.1:9/resolve"},
            "s3": {
                "bucket": "dental-images",
                "region": "us-east-1",
                "endpoint_url": "http://127.0.0.1:9",
            },
            "orthanc": {"url": "http://127.0.0.1:9", "username": "u"},
            "transfer": {"state_dir": str(tmp_path / "state")},
        }
    )


def test_each_client_and_its_secret_is_looked_up_once_per_run(tmp_path):
    secrets = CountingSecrets()
    ctx = RunContext(config(tmp_path), "run-1", secrets)
    with ThreadPoolExecutor(8) as pool:
        clients = list(pool.map(lambda _: (ctx.s3, ctx.engine, ctx.orthanc), range(64)))
    assert len({tuple(map(id, c)) for c in clients}) == 1  # the same three, every time
    assert sorted(secrets.asked) == [
        "aws",
        "database.password_secret_block",
        "orthanc.password_secret_block",
    ]


def test_other_settings_look_them_up_again_for_the_same_run(tmp_path):
    secrets = CountingSecrets()
    ctx = RunContext(config(tmp_path), "run-1", secrets)
    assert ctx.s3 is not None
    full = ctx.with_config(ctx.config.model_copy())
    assert (full.run_id, full.secrets) == ("run-1", secrets)
    assert full.s3 is not None
    assert secrets.asked == ["aws", "aws"]
