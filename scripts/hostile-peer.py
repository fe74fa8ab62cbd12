#!/usr/bin/env python3
"""A hostile peer of Bard's cluster protocol (docs/protocol.md, version 2), for scripts/chaos.sh. Written apart from
Bard's own code on purpose: it speaks the wire format as any outsider could.

    hostile-peer.py --connect tcp://127.0.0.1:PORT --behaviour B [--name N] [--seconds S] [--keys DIR --key-file F]

Behaviours:
  silent     registers, heartbeats, never answers a step (costs the run a step deadline, then a quarantine)
  poisoning  registers and answers every step with refuse(diverged) (the coordinator recomputes the shard)
  flooding   never registers; sends messages of many large frames, hellos with 1 MiB names, and garbage
  thief      says hello with another worker's --name (refused when keys bind names, and logged)
Prints one line at the end: what it sent and what it was told.
"""
import argparse
import os
import struct
import time

import zmq

MAGIC, VERSION = b"BARD", 2
HELLO, WELCOME, REFUSE, STEP, RESULT, DONE, HEARTBEAT = 1, 2, 3, 4, 5, 6, 7
DIVERGED = 4


def header(kind):
    return MAGIC + struct.pack("<HB", VERSION, kind)


def string(s):
    b = s.encode()
    return struct.pack("<I", len(b)) + b


def read_key(path, field):
    for line in open(path, encoding="utf-8"):
        if line.startswith(field + "="):
            return line.strip().split("=", 1)[1]
    raise SystemExit(f"hostile-peer: no {field}= in {path}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connect", required=True)
    ap.add_argument("--behaviour", required=True, choices=["silent", "poisoning", "flooding", "thief"])
    ap.add_argument("--name", default="hostile")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--keys", help="key directory (coordinator.pub)")
    ap.add_argument("--key-file", help="this peer's key pair (public=/secret=)")
    ap.add_argument("--frame-bytes", type=int, default=8 << 20, help="size of each flooding frame")
    a = ap.parse_args()

    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, 16)
    s.setsockopt(zmq.IDENTITY, f"{a.name}.{os.getpid():x}".encode())
    if a.keys:
        s.curve_serverkey = read_key(os.path.join(a.keys, "coordinator.pub"), "public").encode()
        s.curve_publickey = read_key(a.key_file, "public").encode()
        s.curve_secretkey = read_key(a.key_file, "secret").encode()
    s.connect(a.connect)

    sent, told, steps = 0, {}, 0
    registered = False
    end = time.monotonic() + a.seconds
    last_beat = 0.0
    big = os.urandom(1024) * (a.frame_bytes // 1024)
    while time.monotonic() < end:
        now = time.monotonic()
        if a.behaviour == "flooding":
            try:
                s.send_multipart([header(HEARTBEAT)] + [big] * 6, flags=zmq.NOBLOCK)
                s.send_multipart([header(HELLO) + string("x" * (1 << 20)) + string("")], flags=zmq.NOBLOCK)
                s.send_multipart([os.urandom(64) for _ in range(4)], flags=zmq.NOBLOCK)
                sent += 3
            except zmq.Again:
                time.sleep(0.01)
        elif now - last_beat >= 1:
            msg = header(HEARTBEAT) if registered else header(HELLO) + string(a.name) + string("")
            s.send(msg)
            sent += 1
            last_beat = now
        if not s.poll(10):
            continue
        frames = s.recv_multipart()
        if len(frames[0]) < 7 or frames[0][:4] != MAGIC:
            continue
        kind = frames[0][6]
        told[kind] = told.get(kind, 0) + 1
        if kind == WELCOME:
            registered = True
        elif kind == REFUSE:
            n = struct.unpack_from("<I", frames[0], 7)[0]
            code = struct.unpack_from("<H", frames[0], 11 + n)[0]
            if code == 1:  # re-register
                registered = False
            else:
                told[f"refuse {code}"] = told.get(f"refuse {code}", 0) + 1
        elif kind == STEP:
            steps += 1
            if a.behaviour == "poisoning":
                s.send(header(REFUSE) + string("non-finite loss (a lie)") + struct.pack("<H", DIVERGED))
                sent += 1
        elif kind == DONE:
            break
    names = {WELCOME: "welcome", REFUSE: "refuse", STEP: "step", DONE: "done", HEARTBEAT: "heartbeat"}
    replies = ", ".join(f"{names.get(k, k)} x{v}" for k, v in told.items()) or "nothing"
    print(f"hostile-peer {a.behaviour}: sent {sent} messages, got {steps} step requests; told: {replies}")


if __name__ == "__main__":
    main()
