# Readiness of a Celery worker: its main process (PID 1) holds an established TCP connection,
# the one to its broker that it consumes from. Reads /proc only: no broker round trip.
import os, sys
pid = sys.argv[1] if len(sys.argv) > 1 else "1"
sockets = set()
for fd in os.listdir(f"/proc/{pid}/fd"):
    try:
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        continue
    if target.startswith("socket:["):
        sockets.add(target[8:-1])
for table in ("tcp", "tcp6"):
    try:
        with open(f"/proc/{pid}/net/{table}") as f:
            rows = [line.split() for line in f.readlines()[1:]]
    except OSError:
        continue
    # Columns: sl local remote state ... inode (the 10th); state 01 is ESTABLISHED.
    if any(r[3] == "01" and r[9] in sockets for r in rows):
        sys.exit(0)
sys.exit("the worker is not connected to its broker")
