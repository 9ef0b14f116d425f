"""An independent SCM_RIGHTS peer for fd-queue's interop tests, on Python's stdlib only
(socket.send_fds / socket.recv_fds).

  python3 peer.py send <socket path> <file>
      Connects, sends b"abc" with no fds, then b"XYZ" with two fds attached by ONE
      send_fds: <file> opened read-only and the write end of a fresh os.pipe(). It
      closes its own copies, then reads the pipe until end-of-file (which needs every
      write end closed, the one fd-queue received included) and prints
      {"pipe": <what arrived>}.

  python3 peer.py recv <socket path>
      Connects and reads ONE byte per recv_fds call until end of stream, so it can tell
      which byte each fd arrived with. For every fd: fstat, the first bytes of a regular
      file (pread), and for a pipe open for writing it writes "python <pid> wrote this".
      Prints {"bytes": ..., "fds": [{"byte": i, ...}, ...]}.

  python3 peer.py burst <socket path> <plan file>
      Connects and sends the plan's messages as fast as it can, one send_fds (or sendall
      when it has none) each: the plan is JSON, {"files": [path, ...], "messages":
      [[text, [file index, ...]], ...]}, each file opened read-only once. Then it shuts
      down its writing side, closes its files, reads until end of stream and prints
      {"sent": <messages>}.

  python3 peer.py oob <socket path> <file> <file> <file>
      Connects and sends b"before", then b"!" as out-of-band data (MSG_OOB) with the
      first file's fd, then b"after" with the other two, then shuts down its writing
      side, reads until end of stream and prints {"oob": "sent"} ({"oob":
      "unsupported"} where the kernel refuses MSG_OOB on a Unix socket: then b"!" goes
      as plain data, with its fd).

Every line on stdout is JSON; "connected" is printed once the connection is made.
"""

import array
import fcntl
import json
import os
import socket
import stat
import sys

SCM_MAX_FD = 253
# macOS has no MSG_CMSG_CLOEXEC (nothing here execs, so the flag changes nothing there).
MSG_CMSG_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0)


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    print(json.dumps({"connected": os.getpid()}), flush=True)
    return s


def describe(fd, index):
    st = os.fstat(fd)
    access = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    info = {
        "byte": index,
        "dev": str(st.st_dev),
        "ino": str(st.st_ino),
        "cloexec": bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC),
    }
    if stat.S_ISREG(st.st_mode):
        info["kind"] = "file"
        info["content"] = os.pread(fd, 256, 0).decode()
    elif stat.S_ISFIFO(st.st_mode):
        info["kind"] = "pipe"
        if access == os.O_WRONLY:
            text = "python %d wrote this" % os.getpid()
            os.write(fd, text.encode())
            info["wrote"] = text
    else:
        info["kind"] = "other"
    return info


def send(path, file):
    s = connect(path)
    s.sendall(b"abc")
    fd = os.open(file, os.O_RDONLY)
    r, w = os.pipe()
    sent = socket.send_fds(s, [b"XYZ"], [fd, w])
    os.close(fd)
    os.close(w)
    chunks = []
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    s.close()
    print(json.dumps({"sent": sent, "pipe": b"".join(chunks).decode()}), flush=True)


def recv(path):
    s = connect(path)
    data = bytearray()
    fds = []
    while True:
        msg, received, flags, _ = socket.recv_fds(s, 1, SCM_MAX_FD, MSG_CMSG_CLOEXEC)
        if flags & socket.MSG_CTRUNC:
            raise SystemExit("control data truncated")
        for fd in received:
            fds.append(describe(fd, len(data)))
            os.close(fd)
        if not msg:
            break
        data += msg
    s.close()
    print(json.dumps({"bytes": data.decode(), "fds": fds}), flush=True)


def burst(path, plan_file):
    with open(plan_file) as f:
        plan = json.load(f)
    opened = [os.open(name, os.O_RDONLY) for name in plan["files"]]
    s = connect(path)
    for text, indexes in plan["messages"]:
        data = text.encode()
        if indexes:
            sent = socket.send_fds(s, [data], [opened[i] for i in indexes])
            # The fds went with the first part; the rest goes without them.
            s.sendall(data[sent:])
        else:
            s.sendall(data)
    finish(s, opened, {"sent": len(plan["messages"])})


def oob(path, files):
    opened = [os.open(name, os.O_RDONLY) for name in files]
    s = connect(path)
    s.sendall(b"before")
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", opened[:1]))]
    try:
        s.sendmsg([b"!"], rights, socket.MSG_OOB)
        outcome = "sent"
    except OSError:
        s.sendmsg([b"!"], rights)
        outcome = "unsupported"
    socket.send_fds(s, [b"after"], opened[1:])
    finish(s, opened, {"oob": outcome})


def finish(s, opened, result):
    """Shuts down the writing side, closes the files, reads until end of stream, prints result."""
    s.shutdown(socket.SHUT_WR)
    for fd in opened:
        os.close(fd)
    while s.recv(4096):
        pass
    s.close()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "send":
        send(sys.argv[2], sys.argv[3])
    elif mode == "recv":
        recv(sys.argv[2])
    elif mode == "burst":
        burst(sys.argv[2], sys.argv[3])
    elif mode == "oob":
        oob(sys.argv[2], sys.argv[3:6])
    else:
        raise SystemExit(
            "usage: peer.py send <socket> <file> | recv <socket> | burst <socket> <plan>"
            " | oob <socket> <file> <file> <file>"
        )
