#!/usr/bin/env python3
"""Failover load for bench/failover.sh: N threads reconnect continuously (plain MQTT 3.1.1
CONNECT, expect CONNACK 0, DISCONNECT) to HOST:PORT until DURATION seconds pass. Prints one line
per attempt: '<start epoch seconds> <1|0>' (0 = connect refused/reset, no CONNACK, or timeout)."""
import socket, sys, threading, time

host, port, n, duration = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
end = time.time() + duration
out, lock = [], threading.Lock()

def session(cid):
    s = socket.create_connection((host, port), timeout=3)
    try:
        s.settimeout(3)
        body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
        s.sendall(bytes([0x10, len(body)]) + body)
        ack = b""
        while len(ack) < 4:
            chunk = s.recv(4 - len(ack))
            if not chunk:
                return False
            ack += chunk
        s.sendall(b"\xe0\x00")
        return ack == b"\x20\x02\x00\x00"
    finally:
        s.close()

def worker(i):
    k = 0
    while time.time() < end:
        t = time.time()
        try:
            ok = session(b"fo%d-%d" % (i, k))
        except OSError:
            ok = False
        with lock:
            out.append((t, ok))
        k += 1
        time.sleep(0.05)

threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join()
for t, ok in sorted(out):
    print("%.3f %d" % (t, 1 if ok else 0))
