"""The domain: models, lifecycle services, console views, APIs and admin."""
