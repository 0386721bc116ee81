"""/metrics in Prometheus's text format, for allowed scrapers only: it names workers, queues
and traffic, which is nobody else's business.

Allowed: a client address in MINT_METRICS_ALLOW (addresses or networks, comma-separated;
loopback by default), or a request bearing `Authorization: Bearer <MINT_METRICS_TOKEN>` when
that is set. Behind a proxy the address is the proxy's: use the token.
"""

from __future__ import annotations

import hmac
import ipaddress
import os

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

from adapters_app.metrics.fleet import FleetCollector

# The fleet's gauges have a registry of their own, registered once: a scrape reads both.
FLEET = CollectorRegistry()
FLEET.register(FleetCollector())


def metrics(request: HttpRequest) -> HttpResponse:
    if not allowed(request):
        return HttpResponse("metrics are for allowed scrapers only\n", status=403, content_type="text/plain")
    served = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        served = CollectorRegistry()
        multiprocess.MultiProcessCollector(served)  # every web process's counters, added up
    return HttpResponse(generate_latest(served) + generate_latest(FLEET), content_type=CONTENT_TYPE_LATEST)


def allowed(request: HttpRequest) -> bool:
    token = settings.MINT_METRICS_TOKEN
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if token and given and hmac.compare_digest(given.encode(), token.encode()):
        return True
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(address in network for network in allowed_networks())


def allowed_networks() -> list:
    networks = []
    for entry in settings.MINT_METRICS_ALLOW.split(","):
        if entry.strip():
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
    return networks
