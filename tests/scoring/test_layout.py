from datetime import datetime, timezone

import pytest

from scoring import layout


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "x" * 10_000, ".hidden", "dev..1", "dév"])
def test_check_id_refuses_ids_that_are_not_safe_paths(bad):
    with pytest.raises(ValueError, match="invalid device id"):
        layout.check_id(bad)


def test_check_id_accepts_fleet_ids():
    assert layout.check_id("dev-00001") == "dev-00001"
    assert layout.check_id("Pump_7.A") == "Pump_7.A"


def test_hours_are_utc_partitions():
    hour = layout.parse_hour("2026-11-27T05:42:10+02:00")
    assert hour == datetime(2026, 11, 27, 3, tzinfo=timezone.utc)
    assert layout.partition(hour) == "date=2026-11-27/hour=03"
    assert layout.table_partition("predictions", hour) == "tables/predictions/date=2026-11-27/hour=03"
    assert layout.hour_label(hour) == "2026-11-27T03"


def test_hour_range_is_inclusive_and_refuses_reversed_ranges():
    hours = layout.hour_range(layout.parse_hour("2026-11-27T22"), layout.parse_hour("2026-11-28T01"))
    assert [layout.hour_label(h) for h in hours] == [
        "2026-11-27T22", "2026-11-27T23", "2026-11-28T00", "2026-11-28T01"]
    with pytest.raises(ValueError, match="before it starts"):
        layout.hour_range(hours[-1], hours[0])


def test_model_files_follow_the_layout():
    assert layout.model_file("v1", "dev-1", None, ".f64") == "models/v=v1/dev-1.f64"
    assert layout.model_file("v1", "dev-1", "sensor2", ".f64") == "models/v=v1/dev-1/sensor2.f64"
    assert layout.pack_file("v1", 3) == "models/v=v1/packs/pack-00003.zip"
    assert layout.manifest_file("v1") == "models/v=v1/manifest.json"
    with pytest.raises(ValueError):
        layout.model_file("v1", "../etc", None, ".f64")
    with pytest.raises(ValueError, match="invalid model version"):
        layout.manifest_file("../v1")
