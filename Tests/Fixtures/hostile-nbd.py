#!/usr/bin/env python3
"""A small NBD server (fixed newstyle, structured replies) that misbehaves on purpose, for the tests of
what Strata does with a hostile or broken server. It serves SIZE bytes of a repeating pattern on a unix
socket, one client at a time, and misbehaves as MODE says:

  garbage         send random bytes instead of the greeting
  refuse          answer NBD_OPT_GO with an error (no such export)
  extents-past    block status describes more than was asked (three extents, the first two past it)
  extents-empty   block status sends an extent of length 0
  drop-after N    close the connection after answering N reads
  read-error      answer every read with EIO
  zero-lie        block status calls everything zeros (it is not: reads give the pattern)

usage: hostile-nbd.py SOCKET SIZE MODE [N]
"""
import os
import socket
import struct
import sys

NBDMAGIC, IHAVEOPT, REPLY_MAGIC = b"NBDMAGIC", 0x49484156454F5054, 0x3E889045565A9
REQUEST, STRUCTURED = 0x25609513, 0x668E33EF
OPT_GO, OPT_INFO, OPT_STRUCTURED, OPT_SET_META = 7, 6, 8, 10
REP_ACK, REP_INFO, REP_META, REP_ERR_UNKNOWN = 1, 3, 4, (1 << 31) + 6
CMD_READ, CMD_DISC, CMD_BLOCK_STATUS = 0, 2, 7
FLAG_HAS_FLAGS, FLAG_READ_ONLY = 1, 2
CONTEXT_ID = 1


def recv(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def option_reply(conn, option, kind, payload=b""):
    conn.sendall(struct.pack(">QIII", REPLY_MAGIC, option, kind, len(payload)) + payload)


def serve(conn, size, mode, n):
    if mode == "garbage":
        conn.sendall(os.urandom(64))
        return
    conn.sendall(NBDMAGIC + struct.pack(">QH", IHAVEOPT, 1 | 2))  # fixed newstyle, no zeroes
    recv(conn, 4)  # client flags
    meta = False
    while True:
        magic, option, length = struct.unpack(">QII", recv(conn, 16))
        data = recv(conn, length)
        if option == OPT_STRUCTURED:
            option_reply(conn, option, REP_ACK)
        elif option == OPT_SET_META:
            name_len = struct.unpack(">I", data[0:4])[0]
            count = struct.unpack(">I", data[4 + name_len:8 + name_len])[0]
            at = 8 + name_len
            for _ in range(count):
                l = struct.unpack(">I", data[at:at + 4])[0]
                query = data[at + 4:at + 4 + l]
                at += 4 + l
                if query == b"base:allocation":
                    meta = True
                    option_reply(conn, option, REP_META, struct.pack(">I", CONTEXT_ID) + query)
            option_reply(conn, option, REP_ACK)
        elif option in (OPT_GO, OPT_INFO):
            if mode == "refuse":
                option_reply(conn, option, REP_ERR_UNKNOWN, b"no such export here")
                continue
            option_reply(conn, option, REP_INFO, struct.pack(">HQH", 0, size, FLAG_HAS_FLAGS | FLAG_READ_ONLY))
            option_reply(conn, option, REP_ACK)
            if option == OPT_GO:
                break
        else:
            option_reply(conn, option, (1 << 31) + 1)  # unsupported
    reads = 0
    while True:
        magic, flags, kind, handle, offset, length = struct.unpack(">IHHQQI", recv(conn, 28))
        if kind == CMD_DISC:
            return
        if kind == CMD_READ:
            if mode == "drop-after" and reads >= n:
                return
            reads += 1
            if mode == "read-error":
                payload = struct.pack(">IH", 5, 0)  # EIO, no message
                conn.sendall(struct.pack(">IHHQI", STRUCTURED, 1, 32769, handle, len(payload)) + payload)
                continue
            data = bytes((offset + i) % 251 for i in range(length))
            payload = struct.pack(">Q", offset) + data
            conn.sendall(struct.pack(">IHHQI", STRUCTURED, 1, 1, handle, len(payload)) + payload)
        elif kind == CMD_BLOCK_STATUS:
            if mode == "extents-past":
                extents = [(length + 65536, 0), (length, 0), (length, 0)]
            elif mode == "extents-empty":
                extents = [(0, 0), (length, 0)]
            elif mode == "zero-lie":
                extents = [(length, 3)]  # a hole, reading as zeros
            else:
                extents = [(length, 0)]
            payload = struct.pack(">I", CONTEXT_ID) + b"".join(struct.pack(">II", l, f) for l, f in extents)
            conn.sendall(struct.pack(">IHHQI", STRUCTURED, 1, 5, handle, len(payload)) + payload)
        else:
            payload = struct.pack(">IH", 22, 0)  # EINVAL
            conn.sendall(struct.pack(">IHHQI", STRUCTURED, 1, 32769, handle, len(payload)) + payload)


def main():
    path, size, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    if os.path.exists(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Bound and listening under another name first: a client that sees the path can connect at once (between
    # bind and listen a connect is refused, and a test waiting for the path raced that).
    server.bind(path + ".new")
    server.listen(8)
    os.rename(path + ".new", path)
    while True:
        conn, _ = server.accept()
        try:
            serve(conn, size, mode, n)
        except (EOFError, ConnectionError, struct.error):
            pass
        finally:
            conn.close()


if __name__ == "__main__":
    main()
