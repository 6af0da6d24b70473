#!/usr/bin/env python3
"""Resident memory per idle WebSocket connection of a running server.

Usage: measure-idle-memory.py HOST PORT CONNECTIONS SERVER_PID
Opens CONNECTIONS upgraded WebSocket connections (handshake only, from 127.0.0.1-127.0.0.8),
waits 2 s, and prints (VmRSS after - VmRSS before) / CONNECTIONS. See results/memory.md.
"""
import socket, sys, time, os
addr=(sys.argv[1], int(sys.argv[2])); n=int(sys.argv[3]); pid=int(sys.argv[4])
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])
req=b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
time.sleep(0.5)
r0=rss(); socks=[]
srcs=[f"127.0.0.{i}" for i in range(1,9)]
for i in range(n):
    s=socket.socket(); s.bind((srcs[i%8],0)); s.connect(addr); s.sendall(req)
    d=b""
    while b"\r\n\r\n" not in d: d+=s.recv(4096)
    socks.append(s)
time.sleep(2)
r1=rss()
print(f"before {r0} KiB after {r1} KiB: {(r1-r0)/n*1024:.0f} bytes/conn ({(r1-r0)/n:.3f} KiB)")
