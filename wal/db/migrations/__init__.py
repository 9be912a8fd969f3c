"""The schema's Alembic migrations, shipped in the package (``script_location`` is
``wal.db:migrations``). ``env.py`` runs them on the connection :mod:`wal.db.migrate` gives
it; ``versions/`` holds one module per revision, named in ``wal.db.versioning.REVISIONS``.
"""
