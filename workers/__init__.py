"""Celery tasks (thin) and the ML engine they call."""
