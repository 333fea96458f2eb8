"""Root conftest: loads the project's shared fixtures for every test tree."""

pytest_plugins = ["shared.pytest_fixtures"]
