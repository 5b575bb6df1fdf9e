"""The "Multiple points" value: built right, checked by schema_errors and by an independent JSON Schema,
and written atomically."""

from __future__ import annotations

import copy
import json
import math

import jsonschema
import numpy as np
import pytest
from conftest import MULTIPLE_POINTS_SCHEMA, assert_valid_output

from algorithm.output import multiple_points, schema_errors, write_json_atomically


@pytest.fixture
def landmarks() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.uniform(0, 2880, size=(4, 2)) for _ in range(3)]


def test_multiple_points_is_a_valid_value_with_every_landmark_of_every_image(landmarks):
    value = multiple_points(landmarks)
    assert value["name"] == "Orthodontic landmarks"
    assert value["type"] == "Multiple points"
    assert value["version"] == {"major": 1, "minor": 0}
    points = assert_valid_output(value, num_images=3, num_landmarks=4)
    np.testing.assert_allclose(points, np.stack(landmarks), atol=5e-4)  # rounded to 3 decimals
    assert all(type(c) is float for p in value["points"] for c in p["point"][:2])
    assert all(type(p["point"][2]) is int for p in value["points"])


def test_z_starts_where_asked(landmarks):
    value = multiple_points(landmarks, first_z=6)
    assert sorted({p["point"][2] for p in value["points"]}) == [6, 7, 8]


def test_numpy_scalars_become_plain_json_numbers():
    value = multiple_points([np.array([[np.float32(1.25), np.float64(2.5)]])])
    assert json.loads(json.dumps(value))["points"][0]["point"] == [1.25, 2.5, 1]


def test_optional_keys_are_accepted_by_both_checks(landmarks):
    value = multiple_points(landmarks)
    value["points"][0].update(probability=0.0, type="Point")
    value["points"][1].update(probability=1)
    del value["name"]
    jsonschema.validate(value, MULTIPLE_POINTS_SCHEMA)
    assert schema_errors(value) == []


def parent_of(value, path):
    for key in path[:-1]:
        value = value[key]
    return value


def set_key(path, new):
    def mutate(value):
        parent_of(value, path)[path[-1]] = new
    return mutate


def delete_key(path):
    def mutate(value):
        del parent_of(value, path)[path[-1]]
    return mutate


BROKEN = {  # what breaks the value -> how
    "extra top-level key": set_key(["comment"], "hello"),
    "no type": delete_key(["type"]),
    "no points": delete_key(["points"]),
    "no version": delete_key(["version"]),
    "other type": set_key(["type"], "Multiple lines"),
    "name not a string": set_key(["name"], 3),
    "points not a list": set_key(["points"], {"name": "1"}),
    "negative version": set_key(["version", "minor"], -1),
    "version as text": set_key(["version", "major"], "1"),
    "version without minor": delete_key(["version", "minor"]),
    "version with patch": set_key(["version", "patch"], 0),
    "extra point key": set_key(["points", 0, "label"], "Sella"),
    "point of 2 numbers": set_key(["points", 1, "point"], [1.0, 2.0]),
    "point of 4 numbers": set_key(["points", 1, "point"], [1.0, 2.0, 1, 0]),
    "point with text": set_key(["points", 1, "point"], [1.0, "2", 1]),
    "point with null": set_key(["points", 1, "point"], [1.0, None, 1]),
    "point not a list": set_key(["points", 1, "point"], 3.0),
    "point name not a string": set_key(["points", 2, "name"], 1),
    "probability above 1": set_key(["points", 0, "probability"], 1.5),
    "probability below 0": set_key(["points", 0, "probability"], -0.1),
    "point type not Point": set_key(["points", 0, "type"], "Line"),
    "point not an object": set_key(["points", 0], [1.0, 2.0, 1]),
}


@pytest.mark.parametrize("breakage", BROKEN)
def test_broken_values_are_caught_by_both_checks(landmarks, breakage):
    value = copy.deepcopy(multiple_points(landmarks))
    BROKEN[breakage](value)
    assert schema_errors(value), f"schema_errors missed: {breakage}"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(value, MULTIPLE_POINTS_SCHEMA)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, True])
def test_non_finite_or_boolean_coordinates_are_caught(landmarks, bad):
    """JSON Schema would let NaN through (and JSON cannot hold it): schema_errors must not."""
    value = multiple_points(landmarks)
    value["points"][5]["point"][0] = bad
    assert any("points[5]" in error for error in schema_errors(value))


def test_a_value_that_is_not_an_object_is_caught():
    assert schema_errors([]) and schema_errors(None) and schema_errors("Multiple points")


def test_write_json_atomically_writes_the_value(tmp_path, landmarks):
    target = tmp_path / "deeper" / "orthodontic-landmarks.json"
    write_json_atomically(multiple_points(landmarks), target)
    assert json.loads(target.read_text()) == json.loads(json.dumps(multiple_points(landmarks)))
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]


@pytest.mark.parametrize("unserialisable", [object(), {1, 2}, math.nan])
@pytest.mark.parametrize("existed_before", [False, True])
def test_write_json_atomically_leaves_no_partial_file_when_serialisation_fails(tmp_path, landmarks, unserialisable,
                                                                              existed_before):
    target = tmp_path / "orthodontic-landmarks.json"
    if existed_before:
        target.write_text('{"old": true}\n')
    value = multiple_points(landmarks)
    value["points"][-1]["point"][1] = unserialisable  # the failure comes after much has been written
    with pytest.raises((TypeError, ValueError)):
        write_json_atomically(value, target)
    if existed_before:
        assert json.loads(target.read_text()) == {"old": True}
        assert [p.name for p in tmp_path.iterdir()] == [target.name]
    else:
        assert list(tmp_path.iterdir()) == []
