"""What the broker still holds: the task ids waiting in a queue or delivered and not yet
acknowledged. Read from Redis as kombu's Redis transport lays them out (a list per queue
and priority step, and the `unacked` hash), for the sweep that re-sends a job's lost task.
"""

from __future__ import annotations

import json
import logging

from mintweb.celery import app as celery_app

log = logging.getLogger(__name__)


def task_ids_held(queues: set[str]) -> set[str] | None:
    """Ids of the tasks waiting in `queues` or delivered to a worker and not yet acked;
    None when the broker cannot say (another transport, or unreachable)."""
    try:
        with celery_app.connection_for_read() as connection:
            channel = connection.default_channel
            client = channel.client
            keys = {channel._q_for_pri(queue, step) for queue in queues for step in channel.priority_steps}
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.lrange(key, 0, -1)
            pipe.hvals(channel.unacked_key)
            *waiting, unacked = pipe.execute()
    except Exception:
        log.warning("could not read what the broker holds; re-sending nothing", exc_info=True)
        return None
    held = set()
    for raw in [message for messages in waiting for message in messages]:
        held.add(_task_id(json.loads(raw)))
    for raw in unacked:
        held.add(_task_id(json.loads(raw)[0]))  # [message, exchange, routing key]
    return held


def _task_id(message: dict) -> str | None:
    return (message.get("headers") or {}).get("id") or (message.get("properties") or {}).get("correlation_id")
