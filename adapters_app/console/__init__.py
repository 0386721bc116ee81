"""The operator console: server-rendered pages over the lifecycle services."""
