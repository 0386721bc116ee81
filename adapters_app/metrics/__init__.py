"""Prometheus metrics at /metrics: what the web process counts as it serves (`http`) and
what the fleet's tables and Redis say at each scrape (`fleet`); `views` serves them to
allowed scrapers only."""
