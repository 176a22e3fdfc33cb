"""Real PostgreSQL, Redis and Celery worker processes (or the embedded SQLite and
filesystem broker): the lifecycle, races, faults and the hot path. `pytest tests/integration`."""
