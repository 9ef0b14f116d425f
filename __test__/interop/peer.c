/*
 * An independent SCM_RIGHTS peer for fd-queue's interop tests: plain sendmsg/recvmsg.
 *
 *   peer send <socket path> <file A> <file B>
 *     Connects, sends "ab" with no fds, then ONE sendmsg of "CD" whose msghdr holds TWO
 *     separate SCM_RIGHTS control messages: [A, B] and then [write end of a new pipe].
 *     It closes its own copies and reads the pipe until end-of-file (every write end
 *     closed, the one fd-queue received included), then prints {"pipe": "..."}.
 *
 *   peer recv <socket path>
 *     Connects and reads ONE byte per recvmsg (control buffer for 253 fds,
 *     MSG_CMSG_CLOEXEC) until end of stream, walking every control message. For each fd
 *     it prints a JSON line: the byte it came with, dev, ino, kind, the first bytes of a
 *     regular file; into a pipe open for writing it writes "c <pid> wrote this".
 *     Last line: {"bytes": "...", "fds": <count>, "messages": <fd-carrying recvmsgs>}.
 *
 * Every stdout line is JSON; {"connected": <pid>} is printed once connected.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "../fixtures/cloexec.h"

#define SCM_MAX_FD 253

static void die(const char *what) {
  fprintf(stderr, "peer.c: %s: %s\n", what, strerror(errno));
  exit(2);
}

static int connect_to(const char *path) {
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) die("socket");
  close_on_exec(s);
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  if (strlen(path) >= sizeof addr.sun_path) {
    errno = ENAMETOOLONG;
    die("socket path");
  }
  strcpy(addr.sun_path, path);
  if (connect(s, (struct sockaddr *)&addr, sizeof addr) < 0) die("connect");
  printf("{\"connected\":%d}\n", (int)getpid());
  fflush(stdout);
  return s;
}

/* Prints `text` as a JSON string; anything but plain printable ASCII becomes '?'. */
static void json_string(const char *text, size_t len) {
  putchar('"');
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)text[i];
    if (c == '\n') fputs("\\n", stdout);
    else if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') putchar('?');
    else putchar(c);
  }
  putchar('"');
}

static int do_send(const char *path, const char *file_a, const char *file_b) {
  int s = connect_to(path);
  if (send(s, "ab", 2, MSG_NOSIGNAL) != 2) die("send ab");

  int a = open(file_a, O_RDONLY | O_CLOEXEC);
  int b = open(file_b, O_RDONLY | O_CLOEXEC);
  if (a < 0 || b < 0) die("open");
  int p[2];
  if (pipe(p) < 0) die("pipe");
  (void)fcntl(p[0], F_SETFD, FD_CLOEXEC);
  (void)fcntl(p[1], F_SETFD, FD_CLOEXEC);

  /* Two SCM_RIGHTS control messages in one msghdr: [a, b], then [p[1]]. */
  union {
    char buf[CMSG_SPACE(2 * sizeof(int)) + CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } control;
  memset(&control, 0, sizeof control);
  char data[] = "CD";
  struct iovec iov = {.iov_base = data, .iov_len = 2};
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.buf;
  msg.msg_controllen = sizeof control.buf;

  struct cmsghdr *first = CMSG_FIRSTHDR(&msg);
  first->cmsg_level = SOL_SOCKET;
  first->cmsg_type = SCM_RIGHTS;
  first->cmsg_len = CMSG_LEN(2 * sizeof(int));
  int pair[2] = {a, b};
  memcpy(CMSG_DATA(first), pair, sizeof pair);

  struct cmsghdr *second = CMSG_NXTHDR(&msg, first);
  if (second == NULL) {
    errno = ENOBUFS;
    die("CMSG_NXTHDR");
  }
  second->cmsg_level = SOL_SOCKET;
  second->cmsg_type = SCM_RIGHTS;
  second->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(second), &p[1], sizeof(int));

  ssize_t sent = sendmsg(s, &msg, MSG_NOSIGNAL);
  if (sent != 2) die("sendmsg");
  close(a);
  close(b);
  close(p[1]);

  char pipe_text[4096];
  size_t got = 0;
  for (;;) {
    ssize_t n = read(p[0], pipe_text + got, sizeof pipe_text - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) die("read pipe");
    if (n == 0) break;
    got += (size_t)n;
    if (got == sizeof pipe_text) break;
  }
  close(p[0]);
  close(s);
  printf("{\"sent\":%zd,\"controlMessages\":2,\"pipe\":", sent);
  json_string(pipe_text, got);
  printf("}\n");
  return 0;
}

static void describe(int fd, size_t byte_index) {
  struct stat st;
  if (fstat(fd, &st) < 0) die("fstat");
  int fd_flags = fcntl(fd, F_GETFD);
  int fl_flags = fcntl(fd, F_GETFL);
  printf("{\"byte\":%zu,\"dev\":\"%llu\",\"ino\":\"%llu\",\"cloexec\":%s", byte_index,
         (unsigned long long)st.st_dev, (unsigned long long)st.st_ino,
         (fd_flags & FD_CLOEXEC) ? "true" : "false");
  if (S_ISREG(st.st_mode)) {
    char buf[256];
    ssize_t n = pread(fd, buf, sizeof buf, 0);
    if (n < 0) die("pread");
    printf(",\"kind\":\"file\",\"content\":");
    json_string(buf, (size_t)n);
  } else if (S_ISFIFO(st.st_mode)) {
    printf(",\"kind\":\"pipe\"");
    if ((fl_flags & O_ACCMODE) == O_WRONLY) {
      char text[64];
      int len = snprintf(text, sizeof text, "c %d wrote this", (int)getpid());
      if (write(fd, text, (size_t)len) != len) die("write pipe");
      printf(",\"wrote\":");
      json_string(text, (size_t)len);
    }
  } else {
    printf(",\"kind\":\"other\"");
  }
  printf("}\n");
}

static int do_recv(const char *path) {
  int s = connect_to(path);
  char bytes[4096];
  size_t len = 0;
  unsigned total_fds = 0, messages = 0;
  union {
    char buf[CMSG_SPACE(SCM_MAX_FD * sizeof(int))];
    struct cmsghdr align;
  } control;
  for (;;) {
    char byte;
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    ssize_t n = recvmsg(s, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) die("recvmsg");
    if (msg.msg_flags & MSG_CTRUNC) {
      errno = EMSGSIZE;
      die("MSG_CTRUNC");
    }
    unsigned here = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; i++) {
        int fd;
        memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        close_on_exec(fd);
        describe(fd, len);
        close(fd);
        here++;
      }
    }
    if (here > 0) messages++;
    total_fds += here;
    if (n == 0) break;
    if (len < sizeof bytes) bytes[len++] = byte;
  }
  close(s);
  printf("{\"bytes\":");
  json_string(bytes, len);
  printf(",\"fds\":%u,\"messages\":%u}\n", total_fds, messages);
  return 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc == 5 && strcmp(argv[1], "send") == 0) return do_send(argv[2], argv[3], argv[4]);
  if (argc == 3 && strcmp(argv[1], "recv") == 0) return do_recv(argv[2]);
  fprintf(stderr, "usage: peer send <socket> <file A> <file B> | peer recv <socket>\n");
  return 64;
}
