"""No worker process and no broker: the database (PostgreSQL, or SQLite for the
embedded deployment) and the code in process. `pytest tests/unit`."""
