"""Per-clinic deployment files and the prefect.yaml rendered from them."""

from pathlib import Path

import pytest
import yaml

from pdata_sync.base.errors import ConfigError
from pdata_sync.cli import main
from pdata_sync.fleet.deployments import load_all, render, render_to

REPO = Path(__file__).resolve().parents[2]


def test_committed_prefect_yaml_is_rendered_from_the_clinic_files():
    assert render_to(REPO / "deployments", REPO / "prefect.yaml", check=True), (
        "prefect.yaml is stale: run `pdata-sync deployments render`"
    )


def test_adding_a_clinic_is_one_new_file(tmp_path: Path):
    folder = tmp_path / "deployments"
    folder.mkdir()
    for p in (REPO / "deployments").glob("*.yaml"):
        (folder / p.name).write_text(p.read_text())
    spec = yaml.safe_load((folder / "clinic-001.yaml").read_text())
    spec["config"]["clinic_id"] = "clinic-003"
    spec["config"]["pdata_root"] = "/mnt/pdata/clinic-003"
    spec["schedule"] = {"cron": "0 3 * * *", "timezone": "Europe/Zurich"}
    spec["work_queue"] = "clinic-003"
    (folder / "clinic-003.yaml").write_text(yaml.safe_dump(spec))

    target = tmp_path / "prefect.yaml"
    assert main(["deployments", "render", "--folder", str(folder), "--output", str(target)]) == 0
    document = yaml.safe_load(target.read_text())
    names = [d["name"] for d in document["deployments"]]
    # clinic-003 is a copy of clinic-001, which also has a weekly verify schedule
    assert names == [
        "clinic-001",
        "clinic-002",
        "clinic-003",
        "clinic-001-verify",
        "clinic-003-verify",
        "retrieve",
        "daily",  # fleet-report/daily
    ]
    audit = document["deployments"][4]
    assert audit["entrypoint"] == "pdata_sync/flows/verify.py:verify_clinic"
    assert audit["schedules"] == [{**spec["verify_schedule"], "active": True}]
    assert audit["work_pool"] == {"name": "pdata-sync", "work_queue_name": "clinic-003"}
    assert audit["parameters"]["config"]["clinic_id"] == "clinic-003"
    new = document["deployments"][2]
    assert new["schedules"] == [{"cron": "0 3 * * *", "timezone": "Europe/Zurich", "active": True}]
    assert new["work_pool"] == {"name": "pdata-sync", "work_queue_name": "clinic-003"}
    assert new["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    assert new["parameters"]["config"]["clinic_id"] == "clinic-003"
    assert new["entrypoint"] == "pdata_sync/flows/sync.py:sync_clinic"
    # the UI shows when a clinic runs, in whose time
    assert "cron '0 3 * * *', Europe/Zurich time" in new["description"]
    assert "cron '0 4 * * 0', Europe/Berlin time" in audit["description"]
    assert (
        main(["deployments", "render", "--folder", str(folder), "--output", str(target), "--check"])
        == 0
    )
    (folder / "clinic-003.yaml").unlink()
    assert (
        main(["deployments", "render", "--folder", str(folder), "--output", str(target), "--check"])
        == 1
    )


def test_a_full_schedule_is_a_second_schedule_with_full_run(tmp_path: Path):
    """A clinic's full reconcile night: the sync deployment gets a second schedule whose
    runs carry full_run: true (tests/integration/test_schedules_fire.py runs one)."""
    folder = tmp_path / "deployments"
    folder.mkdir()
    spec = yaml.safe_load((REPO / "deployments" / "clinic-001.yaml").read_text())
    spec["schedule"] = {"cron": "30 1 * * 1-6", "timezone": "Europe/Berlin"}
    spec["full_schedule"] = {"cron": "30 1 * * 0", "timezone": "Europe/Berlin"}
    (folder / "clinic-001.yaml").write_text(yaml.safe_dump(spec))
    (sync, _verify, _retrieve, _report) = yaml.safe_load(render(load_all(folder)))["deployments"]
    assert sync["schedules"] == [
        {"cron": "30 1 * * 1-6", "timezone": "Europe/Berlin", "active": True},
        {
            "cron": "30 1 * * 0",
            "timezone": "Europe/Berlin",
            "active": True,
            "parameters": {"full_run": True},
        },
    ]
    assert "full reconcile: cron '30 1 * * 0', Europe/Berlin time" in sync["description"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"schedule": {"cron": "every night", "timezone": "UTC"}}, "schedule.cron"),
        ({"schedule": {"cron": "0 1 * * *", "timezone": "Mars/Olympus"}}, "schedule.timezone"),
        ({"work_pool": "Pool With Spaces"}, "work_pool"),
        ({"shedule": {}}, "shedule: is not a known setting"),
    ],
)
def test_bad_deployment_files_name_file_and_field(tmp_path: Path, change, message):
    spec = yaml.safe_load((REPO / "deployments" / "clinic-001.yaml").read_text())
    spec.update(change)
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError) as err:
        load_all(tmp_path)
    assert "x.yaml" in str(err.value) and message in str(err.value)


def test_duplicate_clinic_ids_refused(tmp_path: Path):
    text = (REPO / "deployments" / "clinic-001.yaml").read_text()
    (tmp_path / "a.yaml").write_text(text)
    (tmp_path / "b.yaml").write_text(text)
    with pytest.raises(ConfigError, match="used by two files"):
        load_all(tmp_path)


def test_no_secret_values_in_rendered_yaml():
    text = render(load_all(REPO / "deployments"))
    assert "password_secret_block" in text and "aws_credentials_block" in text
    for word in ("aws_secret_access_key", "password:", "AKIA"):
        assert word not in text


def test_a_clinic_without_a_time_zone_takes_its_schedules(tmp_path: Path):
    """Bandwidth windows and stop_at are clinic time: a config without ``timezone`` gets the
    one its schedule names, not the worker's clock; its own, or none named, is kept."""
    from pdata_sync.fleet.deployments import load_deployment

    spec = yaml.safe_load((REPO / "deployments" / "clinic-001.yaml").read_text())
    spec["config"].pop("timezone", None)
    path = tmp_path / "c.yaml"
    cases = [
        ({"cron": "0 19 * * *", "timezone": "Europe/Zurich"}, None, "Europe/Zurich"),
        ({"cron": "0 19 * * *", "timezone": "Europe/Zurich"}, "Europe/Vienna", "Europe/Vienna"),
        ({"cron": "0 19 * * *"}, None, None),  # UTC by default, not named: the worker's
    ]
    for schedule, own, expected in cases:
        config = {**spec["config"], **({"timezone": own} if own else {})}
        path.write_text(yaml.safe_dump({**spec, "schedule": schedule, "config": config}))
        deployment = load_deployment(path)
        assert deployment.config.timezone == expected, (schedule, own)
        rendered = deployment.config.model_dump(mode="json", by_alias=True, exclude_unset=True)
        assert rendered.get("timezone") == expected  # what the deployment's runs get
