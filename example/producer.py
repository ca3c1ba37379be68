"""Fills a queue of the example app.

Steady: `python producer.py --rate 20 --seconds 60 --task sleep`.
Burst: `python producer.py --burst 200 --duration 0.5` sends 200 tasks at once and exits.
"""
import argparse
import time

from app import burn, sleep

TASKS = {"sleep": sleep, "burn": burn}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=10.0, help="tasks per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to produce")
    parser.add_argument("--task", choices=TASKS, default="sleep")
    parser.add_argument("--duration", type=float, default=1.0, help="seconds each task takes")
    parser.add_argument("--queue", default="celery")
    parser.add_argument("--burst", type=int, default=0, help="send this many tasks at once, then exit")
    args = parser.parse_args()

    task = TASKS[args.task]
    if args.burst:
        for _ in range(args.burst):
            task.apply_async(args=[args.duration], queue=args.queue)
        print(f"sent {args.burst} {args.task} tasks to {args.queue}", flush=True)
        return
    sent = 0
    start = time.monotonic()
    while time.monotonic() - start < args.seconds:
        task.apply_async(args=[args.duration], queue=args.queue)
        sent += 1
        time.sleep(1.0 / args.rate)
    print(f"sent {sent} {args.task} tasks to {args.queue}")


if __name__ == "__main__":
    main()
