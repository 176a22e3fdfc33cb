"""Plumbing every app shares: the REST API's errors, parsers, renderers and
validators, and prepared statements. Imports no app of the project."""
