"""JSON schemas the structured-output tests decode under: nested objects, arrays, enums, required
fields, bounded numbers and patterned strings, each bounded so a small model's answer ends."""

from __future__ import annotations

from typing import Any

JSON_SCHEMAS: dict[str, dict[str, Any]] = {
    "person_address": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "address": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 20},
                    "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                },
                "required": ["city", "zip"],
            },
        },
        "required": ["name", "age", "address"],
    },
    "colors": {
        "type": "object",
        "properties": {
            "colors": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "minItems": 1, "maxItems": 4},
            "primary": {"type": "boolean"},
        },
        "required": ["colors", "primary"],
    },
    "weather_station": {
        "type": "object",
        "properties": {
            "temperature": {"type": "number", "minimum": -50, "maximum": 60},
            "unit": {"enum": ["C", "F"]},
            "station": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
        },
        "required": ["temperature", "unit", "station"],
    },
    "tasks": {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 99}, "done": {"type": "boolean"}},
            "required": ["id", "done"],
        },
        "minItems": 1,
        "maxItems": 3,
    },
}
