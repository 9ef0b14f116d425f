"""fd-queue benchmark: the Python peer, with socket.send_fds / socket.recv_fds.

    peer.py stream-recv PATH MSGS FDS      listen, receive MSGS one-byte messages, close every fd
    peer.py stream-send PATH MSGS FDS      connect, send MSGS one-byte messages with FDS fds each
    peer.py rt-server   PATH COUNT         listen, answer every fd-carrying byte with a 1-byte ack
    peer.py rt-client   PATH COUNT WARMUP  connect, COUNT timed round trips (1 byte + 1 fd, ack)

Same protocol as peer.c: "READY" once listening, one "RESULT {json}" line at the end.
"""

import json
import os
import resource
import signal
import socket
import sys
import time

SCM_MAX_FD = 253


def cpu_us():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return round((ru.ru_utime + ru.ru_stime) * 1e6)


# CPU time when the measured work started (after connect or accept).
cpu_start = 0


def mark_cpu():
    global cpu_start
    cpu_start = cpu_us()


def usage():
    """Peak RSS (KiB on Linux), and CPU time (user + system) since the work started."""
    return {"maxRssKiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "cpuUs": cpu_us() - cpu_start}


# BENCH_SOCK_TYPE=seqpacket: the same modes on SOCK_SEQPACKET (one message per send).
SOCK_TYPE = socket.SOCK_SEQPACKET if os.environ.get("BENCH_SOCK_TYPE") == "seqpacket" else socket.SOCK_STREAM


def accept_one(path):
    listener = socket.socket(socket.AF_UNIX, SOCK_TYPE)
    listener.bind(path)
    listener.listen(16)
    print("READY", flush=True)
    sock, _ = listener.accept()
    listener.close()
    os.unlink(path)
    mark_cpu()
    return sock


def connect_to(path):
    sock = socket.socket(socket.AF_UNIX, SOCK_TYPE)
    sock.connect(path)
    mark_cpu()
    return sock


def result(**fields):
    fields.update(usage())
    print("RESULT " + json.dumps(fields), flush=True)


def read_ack(sock):
    if sock.recv(1) != b"A":
        raise SystemExit("peer.py: no ack: the receiver closed early")


def stream_recv(path, msgs, per):
    sock = accept_one(path)
    recv_fds, close = socket.recv_fds, os.close
    received = reads = 0
    nbytes = 0
    while nbytes < msgs:
        data, fds, flags, _ = recv_fds(sock, 65536, SCM_MAX_FD)
        if not data:
            break
        nbytes += len(data)
        reads += 1
        for fd in fds:
            close(fd)
        received += len(fds)
    sock.sendall(b"A")
    while sock.recv(256):
        pass
    result(bytes=nbytes, reads=reads, fdsReceived=received, fdsClosed=received, expectedFds=msgs * per)


def stream_send(path, msgs, per):
    sock = connect_to(path)
    devnull = os.open("/dev/null", os.O_RDONLY)
    fds = [devnull] * per
    payload = [b"x"]
    send_fds = socket.send_fds
    t0 = time.perf_counter_ns()
    for _ in range(msgs):
        send_fds(sock, payload, fds)
    read_ack(sock)
    elapsed = time.perf_counter_ns() - t0
    sock.close()
    result(elapsedNs=elapsed, msgs=msgs, fdsSent=msgs * per)


def rt_server(path, count):
    sock = accept_one(path)
    recv_fds, close = socket.recv_fds, os.close
    nbytes = received = 0
    while True:
        data, fds, flags, _ = recv_fds(sock, 256, SCM_MAX_FD)
        if not data:
            break
        for fd in fds:
            close(fd)
        received += len(fds)
        nbytes += len(data)
        sock.sendall(b"A" * len(data))
    result(bytes=nbytes, fdsReceived=received, fdsClosed=received, expected=count)


def rt_client(path, count, warmup):
    sock = connect_to(path)
    devnull = os.open("/dev/null", os.O_RDONLY)
    fds = [devnull]
    payload = [b"x"]
    send_fds, clock = socket.send_fds, time.perf_counter_ns
    samples = []
    for _ in range(warmup):
        send_fds(sock, payload, fds)
        read_ack(sock)
    t0 = clock()
    for _ in range(count):
        start = clock()
        send_fds(sock, payload, fds)
        read_ack(sock)
        samples.append(clock() - start)
    elapsed = clock() - t0
    sock.close()
    samples.sort()
    result(
        elapsedNs=elapsed,
        count=count,
        fdsSent=warmup + count,
        p50Ns=samples[count // 2],
        p99Ns=samples[(count * 99) // 100],
    )


def main():
    # A watchdog in case the harness itself dies: SIGALRM ends the process.
    if os.environ.get("BENCH_PEER_TIMEOUT_S"):
        signal.alarm(int(os.environ["BENCH_PEER_TIMEOUT_S"]))
    mode, path, *rest = sys.argv[1:]
    args = [int(x) for x in rest]
    {
        "stream-recv": stream_recv,
        "stream-send": stream_send,
        "rt-server": rt_server,
        "rt-client": rt_client,
    }[mode](path, *args)


if __name__ == "__main__":
    main()
