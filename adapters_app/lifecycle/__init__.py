"""Lifecycle services: the one place where domain rules are enforced.

Views, API endpoints, management commands and worker runs call these; each
validates, writes its rows in one transaction and records an audit event.
"""
