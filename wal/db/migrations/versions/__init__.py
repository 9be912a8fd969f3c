"""One module per schema revision (Alembic): ``v0001_baseline``, ``v0002_service``, ..."""
