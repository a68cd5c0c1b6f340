"""Submission, routing, job records and the Celery app configuration."""
