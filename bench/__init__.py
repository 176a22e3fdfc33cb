"""`make bench`: the platform's hot path measured against its references
(bare Celery on the same Redis, Hindsight's own worker when it can run), and
the embedded deployment against bare Celery on the filesystem broker.

Not part of the shipped package: run it from a checkout (`python -m bench`).
Speed is measured here, never asserted in tests.
"""
