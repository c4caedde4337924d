"""The suite: YAML files parsed into dataclasses, local task indexes, run-wide overrides."""
