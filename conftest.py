"""Project-level test wiring: pytester for black-box runs of the plugin."""

pytest_plugins = ["pytester"]
