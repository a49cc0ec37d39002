"""Persistence: models, the Database handle, repository and queue functions, migrations."""
