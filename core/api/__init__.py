"""The REST API's plumbing, the same for every app's endpoints."""
