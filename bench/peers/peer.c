/*
 * fd-queue benchmark: the C baseline peer. Plain sendmsg/recvmsg (SCM_RIGHTS) and
 * write/read loops on a Unix stream socket, no library in between.
 *
 *   peer stream-recv PATH MSGS FDS     listen, receive MSGS one-byte messages, close every fd
 *   peer stream-send PATH MSGS FDS [dup]
 *                                      connect, send MSGS one-byte messages with FDS fds each
 *                                      (with "dup": a fresh F_DUPFD_CLOEXEC duplicate of each
 *                                      fd per message, closed after the sendmsg, as fd-queue does)
 *   peer rt-server   PATH COUNT        listen, answer every fd-carrying byte with a 1-byte ack
 *   peer rt-client   PATH COUNT WARMUP connect, COUNT timed round trips (1 byte + 1 fd, ack)
 *                                      (both rt modes with BENCH_C_WAIT=epoll: each read first
 *                                      waits in epoll_wait, as an event loop does)
 *   peer bytes-recv  PATH TOTAL        listen, read TOTAL bytes
 *   peer bytes-send  PATH TOTAL CHUNK  connect, write TOTAL bytes in CHUNK-byte writes
 *
 * The listening side prints "READY" once it listens. Every mode ends with one line
 * "RESULT {json}" on stdout; anything wrong goes to stderr with exit status 1. Each
 * receiver answers with a 1-byte ack once it has everything, and the sender stops its
 * clock when the ack arrives.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define SCM_MAX_FD 253

static void die(const char *what) {
  fprintf(stderr, "peer.c: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void fail(const char *what) {
  fprintf(stderr, "peer.c: %s\n", what);
  exit(1);
}

static long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long long cpu_us(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (long long)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000 + ru.ru_utime.tv_usec + ru.ru_stime.tv_usec;
}

/* CPU time when the measured work started (after connect or accept). */
static long long cpu_start;

/* The fields every RESULT ends with: peak RSS, and CPU time (user + system, every thread)
 * since the work started. */
static void print_usage_and_end(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  printf(",\"maxRssKiB\":%ld,\"cpuUs\":%lld}\n", ru.ru_maxrss, cpu_us() - cpu_start);
}

/* BENCH_SOCK_TYPE=seqpacket: the same modes on SOCK_SEQPACKET (one message per send). */
static int sock_type(void) {
  const char *type = getenv("BENCH_SOCK_TYPE");
  return type && !strcmp(type, "seqpacket") ? SOCK_SEQPACKET : SOCK_STREAM;
}

static struct sockaddr_un address(const char *path) {
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  if (strlen(path) >= sizeof addr.sun_path) fail("socket path too long");
  strcpy(addr.sun_path, path);
  return addr;
}

/* Binds, listens, says READY, accepts one connection. */
static int accept_one(const char *path) {
  struct sockaddr_un addr = address(path);
  int lfd = socket(AF_UNIX, sock_type() | SOCK_CLOEXEC, 0);
  if (lfd < 0) die("socket");
  if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind");
  if (listen(lfd, 16) < 0) die("listen");
  printf("READY\n");
  fflush(stdout);
  int fd;
  do fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) die("accept");
  close(lfd);
  unlink(path);
  cpu_start = cpu_us();
  return fd;
}

static int connect_to(const char *path) {
  struct sockaddr_un addr = address(path);
  int fd = socket(AF_UNIX, sock_type() | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket");
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("connect");
  cpu_start = cpu_us();
  return fd;
}

static void write_all(int fd, const char *data, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, data, len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) die("write");
    data += n;
    len -= (size_t)n;
  }
}

/* With BENCH_C_WAIT=epoll, the epoll fd that the rt modes wait in before each read. */
static int rt_epoll = -1;

static void rt_wait_init(int sock) {
  const char *wait = getenv("BENCH_C_WAIT");
  if (!wait || strcmp(wait, "epoll")) return;
  rt_epoll = epoll_create1(EPOLL_CLOEXEC);
  if (rt_epoll < 0) die("epoll_create1");
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = sock};
  if (epoll_ctl(rt_epoll, EPOLL_CTL_ADD, sock, &ev) < 0) die("epoll_ctl");
}

/* Blocks in epoll_wait until the socket is readable (a no-op without BENCH_C_WAIT=epoll). */
static void rt_wait(void) {
  if (rt_epoll < 0) return;
  struct epoll_event ev;
  int n;
  do n = epoll_wait(rt_epoll, &ev, 1, -1);
  while (n < 0 && errno == EINTR);
  if (n < 0) die("epoll_wait");
}

static void read_ack(int fd) {
  rt_wait();
  char c;
  ssize_t n;
  do n = read(fd, &c, 1);
  while (n < 0 && errno == EINTR);
  if (n < 0) die("read ack");
  if (n == 0) fail("no ack: the receiver closed early");
}

/* Waits for the peer to close (so the receiver outlives the sender's last read). */
static void drain_to_eof(int fd) {
  char buf[256];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
  }
}

/* One sendmsg of `len` bytes carrying the `nfds` fds of `fds`. */
static ssize_t send_many(int sock, const char *data, size_t len, const int *fds, int nfds) {
  union {
    char buf[CMSG_SPACE(SCM_MAX_FD * sizeof(int))];
    struct cmsghdr align;
  } control;
  struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
  if (nfds > 0) {
    msg.msg_control = control.buf;
    msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(nfds * sizeof(int));
    memcpy(CMSG_DATA(cmsg), fds, nfds * sizeof(int));
  }
  ssize_t n;
  do n = sendmsg(sock, &msg, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  return n;
}

/* One sendmsg of `len` bytes carrying `nfds` copies of `fd`. */
static ssize_t send_fds(int sock, const char *data, size_t len, int fd, int nfds) {
  int fds[SCM_MAX_FD];
  for (int i = 0; i < nfds; i++) fds[i] = fd;
  return send_many(sock, data, len, fds, nfds);
}

/* One recvmsg; closes every fd that came with it, adding to *fds. Returns bytes read. */
static ssize_t recv_fds(int sock, char *buf, size_t len, long long *fds, long long *truncated) {
  static union {
    char buf[CMSG_SPACE(SCM_MAX_FD * sizeof(int))];
    struct cmsghdr align;
  } control;
  struct iovec iov = {.iov_base = buf, .iov_len = len};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                       .msg_controllen = sizeof control.buf};
  ssize_t n;
  do n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0) die("recvmsg");
  if (msg.msg_flags & MSG_CTRUNC) (*truncated)++;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
    int *got = (int *)CMSG_DATA(c);
    for (int i = 0; i < count; i++) {
      if (close(got[i]) < 0) die("close received fd");
      (*fds)++;
    }
  }
  return n;
}

static int cmp_ll(const void *a, const void *b) {
  long long x = *(const long long *)a, y = *(const long long *)b;
  return (x > y) - (x < y);
}

static long long arg(char **argv, int argc, int i) {
  if (i >= argc) fail("missing argument");
  return atoll(argv[i]);
}

int main(int argc, char **argv) {
  if (argc < 3) fail("usage: peer MODE PATH ...");
  const char *mode = argv[1], *path = argv[2];
  signal(SIGPIPE, SIG_IGN);
  /* A watchdog in case the harness itself dies: SIGALRM ends the process. */
  const char *watchdog = getenv("BENCH_PEER_TIMEOUT_S");
  if (watchdog) alarm((unsigned)atoi(watchdog));

  if (!strcmp(mode, "stream-recv")) {
    long long msgs = arg(argv, argc, 3), per = arg(argv, argc, 4);
    int sock = accept_one(path);
    static char buf[65536];
    long long bytes = 0, fds = 0, truncated = 0, reads = 0;
    while (bytes < msgs) {
      ssize_t n = recv_fds(sock, buf, sizeof buf, &fds, &truncated);
      if (n == 0) break;
      bytes += n;
      reads++;
    }
    write_all(sock, "A", 1);
    drain_to_eof(sock);
    printf("RESULT {\"bytes\":%lld,\"reads\":%lld,\"fdsReceived\":%lld,\"fdsClosed\":%lld,"
           "\"truncated\":%lld,\"expectedFds\":%lld",
           bytes, reads, fds, fds, truncated, msgs * per);
    print_usage_and_end();
    return 0;
  }
  if (!strcmp(mode, "stream-send")) {
    long long msgs = arg(argv, argc, 3);
    int per = (int)arg(argv, argc, 4);
    int sock = connect_to(path);
    int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (devnull < 0) die("open /dev/null");
    /* "dup": do what fd-queue's contract makes it do per fd: a close-on-exec duplicate
     * at enqueue time, closed once the sendmsg carried it. */
    int dup_each = argc > 5 && !strcmp(argv[5], "dup");
    int dups[SCM_MAX_FD];
    long long t0 = now_ns();
    for (long long i = 0; i < msgs; i++) {
      if (!dup_each) {
        if (send_fds(sock, "x", 1, devnull, per) != 1) die("sendmsg");
        continue;
      }
      for (int j = 0; j < per; j++) {
        dups[j] = fcntl(devnull, F_DUPFD_CLOEXEC, 0);
        if (dups[j] < 0) die("fcntl F_DUPFD_CLOEXEC");
      }
      if (send_many(sock, "x", 1, dups, per) != 1) die("sendmsg");
      for (int j = 0; j < per; j++) close(dups[j]);
    }
    read_ack(sock);
    long long elapsed = now_ns() - t0;
    close(sock);
    printf("RESULT {\"elapsedNs\":%lld,\"msgs\":%lld,\"fdsSent\":%lld", elapsed, msgs,
           msgs * per);
    print_usage_and_end();
    return 0;
  }
  if (!strcmp(mode, "rt-server")) {
    long long count = arg(argv, argc, 3);
    int sock = accept_one(path);
    rt_wait_init(sock);
    char buf[256];
    long long bytes = 0, fds = 0, truncated = 0;
    for (;;) {
      rt_wait();
      ssize_t n = recv_fds(sock, buf, sizeof buf, &fds, &truncated);
      if (n == 0) break;
      bytes += n;
      for (ssize_t i = 0; i < n; i++) write_all(sock, "A", 1);
    }
    printf("RESULT {\"bytes\":%lld,\"fdsReceived\":%lld,\"fdsClosed\":%lld,\"truncated\":%lld,"
           "\"expected\":%lld",
           bytes, fds, fds, truncated, count);
    print_usage_and_end();
    return 0;
  }
  if (!strcmp(mode, "rt-client")) {
    long long count = arg(argv, argc, 3), warmup = arg(argv, argc, 4);
    int sock = connect_to(path);
    rt_wait_init(sock);
    int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (devnull < 0) die("open /dev/null");
    long long *samples = malloc(sizeof(long long) * (size_t)(count > 0 ? count : 1));
    if (!samples) fail("out of memory");
    long long t0 = 0;
    for (long long i = 0; i < warmup + count; i++) {
      if (i == warmup) t0 = now_ns();
      long long start = now_ns();
      if (send_fds(sock, "x", 1, devnull, 1) != 1) die("sendmsg");
      read_ack(sock);
      if (i >= warmup) samples[i - warmup] = now_ns() - start;
    }
    long long elapsed = now_ns() - t0;
    close(sock);
    qsort(samples, (size_t)count, sizeof *samples, cmp_ll);
    printf("RESULT {\"elapsedNs\":%lld,\"count\":%lld,\"fdsSent\":%lld,\"p50Ns\":%lld,\"p99Ns\":%lld",
           elapsed, count, warmup + count, samples[count / 2], samples[(count * 99) / 100]);
    print_usage_and_end();
    return 0;
  }
  if (!strcmp(mode, "bytes-recv")) {
    long long total = arg(argv, argc, 3);
    int sock = accept_one(path);
    static char buf[65536];
    long long bytes = 0;
    while (bytes < total) {
      ssize_t n = read(sock, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) die("read");
      if (n == 0) break;
      bytes += n;
    }
    write_all(sock, "A", 1);
    drain_to_eof(sock);
    printf("RESULT {\"bytes\":%lld", bytes);
    print_usage_and_end();
    return 0;
  }
  if (!strcmp(mode, "bytes-send")) {
    long long total = arg(argv, argc, 3), chunk = arg(argv, argc, 4);
    int sock = connect_to(path);
    char *buf = malloc((size_t)chunk);
    if (!buf) fail("out of memory");
    memset(buf, 'b', (size_t)chunk);
    long long t0 = now_ns();
    for (long long sent = 0; sent < total; sent += chunk) {
      write_all(sock, buf, (size_t)(total - sent < chunk ? total - sent : chunk));
    }
    read_ack(sock);
    long long elapsed = now_ns() - t0;
    close(sock);
    printf("RESULT {\"elapsedNs\":%lld,\"bytes\":%lld", elapsed, total);
    print_usage_and_end();
    return 0;
  }
  fail("unknown mode");
  return 1;
}
