#!/usr/bin/env python3
"""Server CPU per protocol-error close with N idle sessions held.
usage: closes.py BIN BACKEND HELD CLOSES"""
import os, socket, subprocess, sys, time, re, selectors
bin_, backend, held, closes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
srv = subprocess.Popen([bin_, "--listen", "127.0.0.1:0", "--backend", backend, "--workers", "1",
                        "--cores", "0", "--max-sessions", str(held + 2000), "--stats-interval", "0s"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
line = srv.stdout.readline()
while "listening on" not in line:
    line = srv.stdout.readline()
port = int(re.search(r"listening on [0-9.]+:(\d+)", line).group(1))
os.sched_setaffinity(0, {1})
idle = []
for i in range(held):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((f"127.0.{1 + i // 60000}.{1 + (i // 250) % 250}", 0)); s.connect(("127.0.0.1", port)); idle.append(s)
time.sleep(1.0)
def cpu():
    f = open(f"/proc/{srv.pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) / 100, int(f[12]) / 100
payload = b"PING " + b"x" * 2000 + b"\r\n"
u0, s0 = cpu(); t0 = time.time()
sel = selectors.DefaultSelector(); done = 0; started = 0; live = 0
while done < closes:
    while live < 50 and started < closes:
        c = socket.socket(); c.bind(("127.0.200.%d" % (1 + started % 250), 0)); c.connect(("127.0.0.1", port))
        c.sendall(payload); c.setblocking(False); sel.register(c, selectors.EVENT_READ); started += 1; live += 1
    for key, _ in sel.select(1.0):
        try:
            d = key.fileobj.recv(65536)
        except ConnectionResetError:
            d = b""
        except BlockingIOError:
            continue
        if not d:
            sel.unregister(key.fileobj); key.fileobj.close(); live -= 1; done += 1
u1, s1 = cpu(); t1 = time.time()
srv.terminate(); srv.wait()
print(f"{backend} held={held} closes={closes} wall={t1-t0:.2f}s user={u1-u0:.2f}s sys={s1-s0:.2f}s "
      f"cpu_us_per_close={(u1-u0+s1-s0)*1e6/closes:.0f}")
