#!/usr/bin/env python3
"""QMP and guest-agent helpers of the benchmark scripts (stdlib only).

  qmp.py push QMP_SOCK DRIVE TARGET   QEMU's own push backup of node DRIVE of a running QEMU:
        blockdev-add of TARGET (`qcow2:PATH` = an existing qcow2 image, `null:SIZE` = a
        null-co node), blockdev-backup sync=full, wait for the job, blockdev-del of the
        target (which flushes it: for a qcow2 file that is QEMU's fdatasync of its output).
        Prints the seconds from the blockdev-add to the blockdev-del's reply.
  qmp.py exec QGA_SOCK CMD            runs `/bin/sh -c CMD` in the guest (guest-exec), waits,
        prints its stdout+stderr, exits with its exit code.
  qmp.py exec-start QGA_SOCK CMD      starts it and prints the guest pid.
  qmp.py exec-wait QGA_SOCK PID       waits for that pid as `exec` does.
"""

import base64
import json
import socket
import sys
import time


class Conn:
    def __init__(self, path, qmp=True):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.f = self.s.makefile("rwb", buffering=0)
        if qmp:
            self.read()  # greeting
            self.cmd("qmp_capabilities")
        self.events = []

    def read(self):
        line = self.f.readline()
        if not line:
            raise SystemExit("monitor closed the connection")
        return json.loads(line)

    def cmd(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.f.write(json.dumps(msg).encode() + b"\n")
        while True:
            r = self.read()
            if "event" in r:
                self.events.append(r)
                continue
            if "error" in r:
                raise SystemExit(f"{name}: {r['error'].get('desc', r['error'])}")
            return r.get("return")

    def wait_event(self, name, job):
        while True:
            for e in self.events:
                if e["event"] == name and e.get("data", {}).get("device") == job:
                    return e
            self.events = [e for e in self.events if e["event"] != name]
            r = self.read()
            if "event" in r:
                self.events.append(r)


def push(sock, drive, target):
    kind, _, arg = target.partition(":")
    node, job = "bench-push-tgt", "bench-push"
    if kind == "qcow2":
        spec = {"driver": "qcow2", "node-name": node,
                "file": {"driver": "file", "filename": arg}}
    elif kind == "null":
        spec = {"driver": "null-co", "node-name": node, "size": int(arg)}
    else:
        raise SystemExit(f"unknown target {target}")
    c = Conn(sock)
    t0 = time.monotonic()
    c.cmd("blockdev-add", **spec)
    c.cmd("blockdev-backup", **{"job-id": job, "device": drive, "target": node,
                                "sync": "full"})
    e = c.wait_event("BLOCK_JOB_COMPLETED", job)
    if e["data"].get("error"):
        raise SystemExit(f"backup job failed: {e['data']['error']}")
    c.cmd("blockdev-del", **{"node-name": node})
    print(f"{time.monotonic() - t0:.3f}")


def guest_exec_start(sock, cmd):
    c = Conn(sock, qmp=False)
    r = c.cmd("guest-exec", path="/bin/sh", arg=["-c", cmd], **{"capture-output": True})
    return r["pid"]


def guest_exec_wait(sock, pid):
    c = Conn(sock, qmp=False)
    while True:
        r = c.cmd("guest-exec-status", pid=int(pid))
        if r.get("exited"):
            for k in ("out-data", "err-data"):
                if r.get(k):
                    sys.stdout.write(base64.b64decode(r[k]).decode(errors="replace"))
            return r.get("exitcode", 1)
        time.sleep(0.05)


def main():
    a = sys.argv[1:]
    if len(a) == 4 and a[0] == "push":
        push(a[1], a[2], a[3])
    elif len(a) == 3 and a[0] == "exec":
        sys.exit(guest_exec_wait(a[1], guest_exec_start(a[1], a[2])))
    elif len(a) == 3 and a[0] == "exec-start":
        print(guest_exec_start(a[1], a[2]))
    elif len(a) == 3 and a[0] == "exec-wait":
        sys.exit(guest_exec_wait(a[1], a[2]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
