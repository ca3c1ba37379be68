"""`load`: scale on work in progress plus backlog against the capacity of the workers.

utilisation = (active tasks + backlog) / (replicas × concurrency)
desired     = ceil((active tasks + backlog) / (concurrency × targetUtilization))

Because tasks in progress count, the policy adds workers while they are busy, before a
backlog forms. Built with componentize-py (see ../build.sh); `Policy` is the export.
"""

from fractions import Fraction
from typing import List, Tuple

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports.types import Decision, Input, PodSample, QueueSample, Sample

DEFAULT_TARGET = Fraction(8, 10)
KNOWN = ("targetUtilization",)


def parse_settings(settings: List[Tuple[str, str]]) -> Fraction:
    target = DEFAULT_TARGET
    for key, value in settings:
        if key == "targetUtilization":
            try:
                # Fraction keeps "0.8" exact, so 240 / (4 × 0.8) is 75, not 75.00000000000001.
                target = Fraction(value.strip())
            except (ValueError, ZeroDivisionError):
                raise Err(f"setting targetUtilization: not a number: {value!r}")
            if not 0 < target <= 1:
                raise Err(f"setting targetUtilization: must be above 0 and at most 1, got {value.strip()}")
        else:
            raise Err(f"setting {key}: unknown (known: {', '.join(KNOWN)})")
    return target


def ceil_div(a: Fraction, b: Fraction) -> int:
    return -(-a // b)


def percent(x: Fraction) -> str:
    return f"{round(x * 100)}%"


def decide(inp: Input) -> Decision:
    target = parse_settings(inp.settings)
    concurrency = inp.concurrency
    if concurrency == 0:
        raise Err("input concurrency is 0: a worker must run at least one task")
    sample = inp.current
    backlog = sum(q.backlog for q in sample.queues)
    known = [p.active_tasks for p in sample.pods if p.active_tasks is not None]
    if known:
        active, source = sum(known), "running"
    else:
        # Without Flower, messages reserved by workers are the nearest measure of work in hand.
        active, source = sum(q.reserved or 0 for q in sample.queues), "reserved"
    work = active + backlog
    desired = ceil_div(Fraction(work), concurrency * target)
    replicas = min(desired, 2**32 - 1)
    slots = inp.current_replicas * concurrency
    busy = f"{percent(Fraction(work, slots))} busy" if slots else "no workers"
    return Decision(
        replicas=replicas,
        reason=(
            f"{active} tasks {source} + {backlog} waiting on {inp.current_replicas}×{concurrency} slots "
            f"({busy}), target {percent(target)} → {replicas} worker{'' if replicas == 1 else 's'}"
        ),
    )


class Policy(exports.Policy):
    def decide(self, input: Input) -> Decision:
        return decide(input)

    def validate_settings(self, settings: List[Tuple[str, str]]) -> None:
        parse_settings(settings)


def _warm_up() -> None:
    """Runs the decision path a few times while componentize-py snapshots this module.

    Every decision runs in a fresh instance made from that snapshot, so whatever CPython
    learns here (specialised bytecode, type attribute caches, interned strings) is already
    learnt in every call, instead of being relearnt, and thrown away, each time.
    """
    pods = [PodSample(f"w-{i}", True, 450, 500, 100 << 20, 128 << 20, 3) for i in range(2)]
    queues = [QueueSample("celery", 120, 8, 2)]
    sample = Sample(1_764_000_000_000, 2, queues, pods)
    for settings in ([], [("targetUtilization", "0.8")], [("targetUtilization", "0.8")]):
        for _ in range(4):
            decide(Input("ns/app", 2, 1, 10, 4, sample, [sample], settings))
    idle = Sample(1_764_000_000_000, 2, queues, [PodSample("w-0", True, None, None, None, None, None)])
    decide(Input("ns/app", 0, 1, 10, 4, idle, [], []))


_warm_up()
