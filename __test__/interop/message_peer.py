"""A Python peer for fd-queue's message sockets (SOCK_SEQPACKET and SOCK_DGRAM), on the
stdlib only (socket.sendmsg / socket.recvmsg with SCM_RIGHTS).

  python3 message_peer.py <seqpacket|dgram> send <target> <file>...
      seqpacket: connects to <target>; dgram: binds <target>.py and sends to <target>.
      Message i (i = 0 .. len(files)-1) is b"msg<i>" with the fds of files[0..i]
      attached in one sendmsg; then a zero-byte message with the fd of files[0]; then
      b"END". Prints {"sent": count}.

  python3 message_peer.py <seqpacket|dgram> recv <path> <count>
      seqpacket: listens at <path> and accepts one connection; dgram: binds <path>.
      Prints {"listening": pid}, then receives <count> messages and prints
      {"messages": [{"data": ..., "from": ..., "fds": [{"dev", "ino", "content"}]}]}.

A <target> or <path> "@name" is the abstract address "\0name". Every line on stdout is JSON.
"""

import array
import json
import os
import socket
import sys

SCM_MAX_FD = 253
KINDS = {"seqpacket": socket.SOCK_SEQPACKET, "dgram": socket.SOCK_DGRAM}


def address(path):
    # "@name" on the command line (argv cannot hold a NUL) is the abstract address "\0name".
    return b"\0" + path[1:].encode() if path.startswith("@") else path


def send(kind, target, files):
    sock = socket.socket(socket.AF_UNIX, KINDS[kind])
    if kind == "seqpacket":
        sock.connect(address(target))
        to = None
    else:
        sock.bind(address(target + ".py"))
        to = address(target)

    def send_one(data, fds):
        ancillary = []
        if fds:
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        if to is None:
            sock.sendmsg([data], ancillary)
        else:
            sock.sendmsg([data], ancillary, 0, to)

    count = 0
    for i in range(len(files)):
        fds = [os.open(f, os.O_RDONLY) for f in files[: i + 1]]
        send_one(b"msg%d" % i, fds)
        for fd in fds:
            os.close(fd)
        count += 1
    fd = os.open(files[0], os.O_RDONLY)
    send_one(b"", [fd])
    os.close(fd)
    send_one(b"END", [])
    count += 2
    print(json.dumps({"sent": count}), flush=True)
    sock.close()
    if kind == "dgram":
        os.unlink(target + ".py")


def recv(kind, path, count):
    sock = socket.socket(socket.AF_UNIX, KINDS[kind])
    sock.bind(address(path))
    if kind == "seqpacket":
        sock.listen(1)
        print(json.dumps({"listening": os.getpid()}), flush=True)
        conn, _ = sock.accept()
    else:
        print(json.dumps({"listening": os.getpid()}), flush=True)
        conn = sock
    messages = []
    for _ in range(count):
        data, ancdata, flags, sender = conn.recvmsg(1 << 18, socket.CMSG_SPACE(SCM_MAX_FD * 4))
        fds = array.array("i")
        for level, ctype, cdata in ancdata:
            if level == socket.SOL_SOCKET and ctype == socket.SCM_RIGHTS:
                fds.frombytes(cdata[: len(cdata) - (len(cdata) % fds.itemsize)])
        described = []
        for fd in fds:
            st = os.fstat(fd)
            described.append(
                {"dev": str(st.st_dev), "ino": str(st.st_ino), "content": os.pread(fd, 256, 0).decode()}
            )
            os.close(fd)
        if isinstance(sender, bytes):
            sender = "\0" + sender[1:].decode() if sender[:1] == b"\0" else sender.decode()
        messages.append(
            {"data": data.decode(), "from": sender or None, "fds": described, "truncated": bool(flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC))}
        )
    print(json.dumps({"messages": messages}), flush=True)
    conn.close()
    if conn is not sock:
        sock.close()
    if not path.startswith("@"):
        os.unlink(path)


def main():
    kind, mode = sys.argv[1], sys.argv[2]
    if mode == "send":
        send(kind, sys.argv[3], sys.argv[4:])
    elif mode == "recv":
        recv(kind, sys.argv[3], int(sys.argv[4]))
    else:
        raise SystemExit("unknown mode " + mode)


if __name__ == "__main__":
    main()
