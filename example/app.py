"""The example Celery application the operator runs: `celery --app=app:celery_app worker`.

The broker comes from CELERY_BROKER_URL, which the operator sets from `spec.broker`.

With EXAMPLE_TASK_LOG set to a Redis list name (and a Redis broker), every task records its
start and its end there, one JSON line each: {"event": "start"|"end", "id", "task", "worker",
"at"}. The tests read it to tell that every task sent ran to its end exactly once, on which
worker, even across a scale-down (`task_acks_late` puts an interrupted task back in the queue,
which the log would show as a second start).
"""
import json
import os
import time

from celery import Celery
from celery.signals import task_postrun, task_prerun

celery_app = Celery("example", broker=os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0"))
celery_app.conf.update(
    task_acks_late=True,  # a task interrupted by a scale-down goes back to the queue
    worker_prefetch_multiplier=1,  # the backlog stays in the broker, where the operator sees it
    broker_connection_retry_on_startup=True,
)


@celery_app.task
def sleep(seconds: float = 1.0) -> float:
    """Holds a worker slot for `seconds`: I/O-bound work."""
    time.sleep(seconds)
    return seconds


@celery_app.task
def report(seconds: float = 300.0) -> float:
    """A long job (five minutes by default): a scale-down waits for it, since the worker pods
    get `workerSpec.terminationGracePeriodSeconds` to finish what they run."""
    time.sleep(seconds)
    return seconds


@celery_app.task
def burn(seconds: float = 1.0) -> int:
    """Spins the CPU for `seconds`: CPU-bound work."""
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
    return n


@celery_app.task
def tick() -> float:
    """The periodic task: `celery beat` sends it every EXAMPLE_BEAT_SECONDS (60 by default) to the
    queue EXAMPLE_BEAT_QUEUE (`celery` by default)."""
    return time.time()


celery_app.conf.beat_schedule = {
    "tick": {
        "task": "app.tick",
        "schedule": float(os.environ.get("EXAMPLE_BEAT_SECONDS", "60")),
        "options": {"queue": os.environ.get("EXAMPLE_BEAT_QUEUE", "celery")},
    },
}


TASK_LOG = os.environ.get("EXAMPLE_TASK_LOG", "")
_log_client = None


def _record(event: str, task_id: str, task, worker: str) -> None:
    global _log_client
    if not TASK_LOG:
        return
    if _log_client is None:
        import redis  # installed with celery[redis]

        _log_client = redis.Redis.from_url(celery_app.conf.broker_url)
    line = {"event": event, "id": task_id, "task": task.name, "worker": worker, "at": time.time()}
    _log_client.rpush(TASK_LOG, json.dumps(line))


@task_prerun.connect
def _started(task_id=None, task=None, **_):
    _record("start", task_id, task, task.request.hostname or "")


@task_postrun.connect
def _ended(task_id=None, task=None, **_):
    _record("end", task_id, task, task.request.hostname or "")
