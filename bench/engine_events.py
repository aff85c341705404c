# engine_events.py — runs one engine command on a job file and yields (seconds since start, event) as each JSON
# event line arrives (docs/engine-protocol.md "Events"): the bench drivers time stages from the wall clock here.
# Warnings and errors also go to stderr. After the loop, run.rc and run.stderr hold the exit status and stderr.
import json, subprocess, sys, time


class EngineRun:
    def __init__(self, engine, command, job_file):
        self.argv = [engine, command, "--job", job_file]
        self.rc, self.stderr = None, ""

    def __iter__(self):
        t0 = time.time()
        p = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in p.stdout:
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                continue
            if e.get("event") in ("warning", "error"):
                print(json.dumps(e), file=sys.stderr, flush=True)
            yield time.time() - t0, e
        self.stderr = p.stderr.read()
        self.rc = p.wait()


def weights_loaded(e):
    """The load progress event that says every tensor is in."""
    return e.get("event") == "progress" and e.get("stage") == "load" and e.get("done") == e.get("total")
