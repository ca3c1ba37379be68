"""The example Celery application the operator runs: `celery --app=app:celery_app worker`.

The broker comes from CELERY_BROKER_URL, which the operator sets from `spec.broker`.
"""
import os
import time

from celery import Celery

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
