#!/usr/bin/env python3
"""A legacy client written like the originals pifleet replaces: Python 3, stdlib sockets, the
home-made "N_payload" length prefix (N counts the whole frame, its own digits included) and the
tcpcom NUL-terminated framing. Each reply is printed as a Python bytes repr, one per line, so a
test can compare exact bytes.

usage:
  legacy_client.py HOST PORT length MSG...      one connection, one request/reply per MSG
  legacy_client.py HOST PORT halfclose MSG      send MSG, shutdown(SHUT_WR), then read the reply
  legacy_client.py HOST PORT nul MSG...         tcpcom: NUL-terminated requests and replies
  legacy_client.py HOST PORT two-sessions       A: on, q (then EOF); B, meanwhile: off
"""
import socket
import sys


def frame(msg):
    # The original sender: the count includes its own digits, which matters at rollover.
    n = len(msg) + 1
    count = n + len(str(n))
    if len(str(count)) != len(str(n)):
        count += 1
    return (str(count) + "_" + msg).encode()


def recv_length(sock):
    # The original receiver: read until "_" is seen, then until count characters have arrived.
    data = b""
    while b"_" not in data:
        chunk = sock.recv(2048)
        if not chunk:
            return data
        data += chunk
    count = int(data.split(b"_", 1)[0])
    while len(data.decode("utf-8", "ignore")) < count:
        chunk = sock.recv(2048)
        if not chunk:
            break
        data += chunk
    return data


def recv_nul(sock):
    data = b""
    while not data.endswith(b"\0"):
        chunk = sock.recv(2048)
        if not chunk:
            break
        data += chunk
    return data


def connect(host, port):
    s = socket.create_connection((host, int(port)), timeout=10)
    return s


def main():
    host, port, mode, msgs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    if mode == "length":
        s = connect(host, port)
        for m in msgs:
            s.sendall(frame(m))
            print(repr(recv_length(s)))
        s.close()
    elif mode == "halfclose":
        s = connect(host, port)
        s.sendall(frame(msgs[0]))
        s.shutdown(socket.SHUT_WR)
        print(repr(recv_length(s)))
        s.close()
    elif mode == "nul":
        s = connect(host, port)
        for m in msgs:
            s.sendall(m.encode() + b"\0")
            print(repr(recv_nul(s)))
        s.close()
    elif mode == "two-sessions":
        a = connect(host, port)
        b = connect(host, port)
        a.sendall(frame("on"))
        print("A", repr(recv_length(a)))
        a.sendall(frame("q"))
        print("A", repr(recv_length(a)))
        print("A eof", repr(a.recv(2048)))
        b.sendall(frame("off"))
        print("B", repr(recv_length(b)))
        a.close()
        b.close()
    else:
        sys.exit("unknown mode " + mode)


if __name__ == "__main__":
    main()
