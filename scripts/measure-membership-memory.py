#!/usr/bin/env python3
"""Resident memory of group memberships in a running `ringcast serve --demo --commands-per-sec 0`.

Usage: measure-membership-memory.py HOST PORT CONNECTIONS SERVER_PID GROUPS_PER_CONN GROUPS
Opens CONNECTIONS WebSocket connections, has each join one group (its first command, which also
creates its protocol state), then GROUPS_PER_CONN - 1 more, and prints the RSS at each stage.
RSS deltas include allocator effects; results/memory.md gives the exact figure from
`cargo bench --bench routing` (a counting allocator) beside this process-level one.
"""
import socket, sys, time, os, struct
addr=(sys.argv[1], int(sys.argv[2])); n=int(sys.argv[3]); pid=int(sys.argv[4]); per=int(sys.argv[5]); groups=int(sys.argv[6])
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])
def frame(payload):
    key=b"\x37\xfa\x21\x3d"; n=len(payload)
    hdr=bytes([0x81, 0x80|n]) if n<126 else bytes([0x81,0x80|126])+struct.pack(">H",n)
    return hdr+key+bytes(b^key[i%4] for i,b in enumerate(payload))
req=b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
time.sleep(0.5)
socks=[]; srcs=[f"127.0.0.{i}" for i in range(1,9)]
for i in range(n):
    s=socket.socket(); s.bind((srcs[i%8],0)); s.connect(addr); s.sendall(req)
    d=b""
    while b"\r\n\r\n" not in d: d+=s.recv(4096)
    socks.append(s)
time.sleep(2); r0=rss()
for i,s in enumerate(socks):
    s.sendall(frame(('{"cmd":"add_group","group_id":"g%d"}'%((i*per)%groups)).encode()))
time.sleep(3); r1=rss()
for i,s in enumerate(socks):
    s.sendall(b"".join(frame(('{"cmd":"add_group","group_id":"g%d"}'%((i*per+k)%groups)).encode()) for k in range(1,per)))
time.sleep(3); r2=rss()
m=n*(per-1)
print(f"{n} idle connections: RSS {r0} KiB; one group each (first command, protocol state created): {r1} KiB; {per} groups each ({groups} groups): {r2} KiB; {(r2-r1)*1024/m:.1f} bytes per added membership")
