from datetime import datetime
from zoneinfo import ZoneInfo

from pdata_sync.pipeline.naming import batch_task_name, run_name


def test_run_name_is_the_due_time_in_utc():
    due = datetime(2026, 12, 1, 1, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    assert run_name("clinic-001", due) == "clinic-001-2026-12-01T00-30Z"
    summer = datetime(2026, 7, 1, 1, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    assert run_name("clinic-001", summer, "verify") == "clinic-001-verify-2026-06-30T23-30Z"


def test_batch_names_sort_in_order():
    assert batch_task_name(3, 17) == "upload-batch-03-of-17"
    assert batch_task_name(7, 207) == "upload-batch-007-of-207"
    names = [batch_task_name(i, 120) for i in range(1, 121)]
    assert names == sorted(names)


def test_a_retrieval_is_named_by_its_patient_and_utc_time_and_a_bad_guid_cannot_shape_it():
    from datetime import UTC, datetime

    from pdata_sync.pipeline.naming import retrieval_run_name

    when = datetime(2026, 12, 7, 18, 40, tzinfo=UTC)
    guid = "3F2C8A54-1B7E-4C1E-9A3D-2B6F0C9E8D71"
    assert retrieval_run_name(guid, when) == "retrieve-3f2c8a54-2026-12-07T18-40Z"
    assert retrieval_run_name("../x\n<script>", when) == "retrieve-c-2026-12-07T18-40Z"
    assert retrieval_run_name(None, when) == "retrieve-invalid-2026-12-07T18-40Z"
