"""Fills the queues of the example app.

Steady: `python producer.py --rate 20 --seconds 60 --task sleep`.
Burst: `python producer.py --burst 200 --duration 0.5` sends 200 tasks at once and exits.
Several queues and priorities: `--queue celery,reports` spreads tasks over the queues in turn,
`--priority 0-9` gives every task a random priority in that range (or `--priority 5`).
A long job: `--task report --duration 600 --burst 2`.
"""
import argparse
import itertools
import random
import time

from app import burn, report, sleep

TASKS = {"sleep": sleep, "burn": burn, "report": report}


def priorities(spec: str):
    """`5` → always 5; `0-9` → uniformly from 0 to 9; empty → none."""
    if not spec:
        return lambda: None
    low, _, high = spec.partition("-")
    low, high = int(low), int(high or low)
    if not 0 <= low <= high <= 9:
        raise SystemExit(f"--priority: {spec!r} is not within 0-9")
    return lambda: random.randint(low, high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=10.0, help="tasks per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to produce")
    parser.add_argument("--task", choices=TASKS, default="sleep")
    parser.add_argument("--duration", type=float, default=1.0, help="seconds each task takes")
    parser.add_argument("--queue", default="celery", help="a queue, or several separated by commas")
    parser.add_argument("--priority", default="", help="a priority 0-9, or a range such as 0-9")
    parser.add_argument("--burst", type=int, default=0, help="send this many tasks at once, then exit")
    args = parser.parse_args()

    task = TASKS[args.task]
    queues = itertools.cycle([q.strip() for q in args.queue.split(",") if q.strip()])
    priority = priorities(args.priority)

    def send() -> None:
        task.apply_async(args=[args.duration], queue=next(queues), priority=priority())

    if args.burst:
        for _ in range(args.burst):
            send()
        print(f"sent {args.burst} {args.task} tasks to {args.queue}", flush=True)
        return
    sent = 0
    start = time.monotonic()
    while time.monotonic() - start < args.seconds:
        send()
        sent += 1
        time.sleep(1.0 / args.rate)
    print(f"sent {sent} {args.task} tasks to {args.queue}")


if __name__ == "__main__":
    main()
