# Liveness of a Celery worker: its main thread still runs. Passes as soon as the thread of
# PID 1 (the worker's main process) has been scheduled or used CPU, fails if it has done
# neither for 10 s: a deadlocked or stopped main process. Never talks to the broker, so a
# broker outage (the worker sleeps and retries) does not fail it.
import sys, time
pid = sys.argv[1] if len(sys.argv) > 1 else "1"
def progress():
    with open(f"/proc/{pid}/task/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    with open(f"/proc/{pid}/task/{pid}/status") as f:
        switches = [l.split()[1] for l in f if "ctxt_switches" in l]
    return fields[11:13] + switches  # utime, stime, voluntary and involuntary switches
first, deadline = progress(), time.monotonic() + 10
while time.monotonic() < deadline:
    time.sleep(0.2)
    if progress() != first:
        sys.exit(0)
sys.exit("the worker's main process has not run for 10 s")
