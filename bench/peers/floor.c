/*
 * fd-queue benchmark: the Node floor for a receiver and for a sender. A Node-API addon
 * that does the least a program on Node can do per call under the contract of fd-queue's
 * async classes. Reading: one recvmsg per read, the fds that came with it queued for a
 * dequeue call each. Writing: an fd duplicated (close-on-exec) when it is enqueued, as
 * the caller may close its own at once; one sendmsg per write carrying the fds enqueued
 * before it, whose duplicates are closed once they went. It blocks in recvmsg and sendmsg
 * (no event loop, no readiness wait), keeps no order between calls, cannot be cancelled
 * and checks nothing beyond what C needs: a bound that no non-blocking read() or write()
 * reaches, not a library.
 *
 *   recv(fd, buffer) -> bytes received into buffer (0 at end of stream); throws on an
 *                       error, and when the kernel truncated the fds (MSG_CTRUNC)
 *   take()           -> the oldest fd received and not yet taken, or null
 *   enqueue(fd)      -> undefined: a duplicate of fd rides on the next send
 *   send(fd, buffer) -> bytes sent (all of buffer), the enqueued fds on the first sendmsg
 *
 * For the round trip, where a read must wait without blocking the event loop, the least
 * libuv allows: a uv_poll_t on the socket itself (no second epoll), started by the first
 * read and kept started while reads follow; on readiness one non-blocking recvmsg and one
 * call into JS, whose callback scope runs the Promise reactions (as net.Socket's read
 * callback does).
 *   watch(fd, buffer, callback) -> undefined: prepares the watch (one socket per process)
 *   wait()           -> undefined: a read waits; at the next readiness, callback(count)
 *                       with the bytes received into buffer (0 at end of stream, -errno on
 *                       an error), the fds that came queued for take()
 *   unwatch()        -> undefined: closes the watch
 *
 * node-peer.mjs (api "floor") runs the AsyncUnixStream receiver's and sender's loops, and
 * both sides of its round trip, on it.
 */
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <uv.h>

#define SCM_MAX_FD 253

/* The fds received and not yet taken: queue[head..tail), grown as needed (several reads
 * may come before the first take when reads are pipelined). */
static int *queue = NULL;
static size_t head = 0, tail = 0, capacity = 0;

static int push(int fd) {
  if (head == tail) head = tail = 0;
  if (tail == capacity) {
    if (head > 0) {
      memmove(queue, queue + head, (tail - head) * sizeof(int));
      tail -= head;
      head = 0;
    } else {
      size_t grown = capacity ? capacity * 2 : 1024;
      int *bigger = realloc(queue, grown * sizeof(int));
      if (!bigger) return -1;
      queue = bigger;
      capacity = grown;
    }
  }
  queue[tail++] = fd;
  return 0;
}

static napi_value throw_message(napi_env env, const char *what, int error) {
  char message[160];
  snprintf(message, sizeof message, "%s: %s", what, error ? strerror(error) : "failed");
  napi_throw_error(env, NULL, message);
  return NULL;
}

/* A control buffer for SCM_MAX_FD fds, aligned for its headers. */
union control {
  char buf[CMSG_SPACE(SCM_MAX_FD * sizeof(int))];
  struct cmsghdr align;
};

/* The (fd, buffer) arguments of recv and send; 0 (a TypeError thrown) when they are not. */
static int fd_and_buffer(napi_env env, napi_callback_info info, const char *usage, int32_t *fd,
                         void **data, size_t *length) {
  size_t argc = 2;
  napi_value argv[2];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 ||
      napi_get_value_int32(env, argv[0], fd) != napi_ok ||
      napi_get_buffer_info(env, argv[1], data, length) != napi_ok) {
    napi_throw_type_error(env, NULL, usage);
    return 0;
  }
  return 1;
}

/* One recvmsg into data (flags: MSG_DONTWAIT or 0), the fds that came queued for take().
 * Returns the byte count, or -errno (-EMSGSIZE: the kernel truncated the fds). */
static ssize_t receive(int fd, void *data, size_t length, int flags) {
  union control control;
  struct iovec iov = {data, length};
  struct msghdr msg = {0};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.buf;
  msg.msg_controllen = sizeof control.buf;
  ssize_t n;
  do n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | flags);
  while (n < 0 && errno == EINTR);
  if (n < 0) return -errno;
  int lost = 0;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
    int *got = (int *)CMSG_DATA(c);
    for (int i = 0; i < count; i++) {
      int one;
      memcpy(&one, got + i, sizeof one);
      if (lost || push(one) < 0) {
        close(one);
        lost = ENOMEM;
      }
    }
  }
  if (lost) return -lost;
  if (msg.msg_flags & MSG_CTRUNC) return -EMSGSIZE;
  return n;
}

static napi_value floor_recv(napi_env env, napi_callback_info info) {
  int32_t fd;
  void *data;
  size_t length;
  if (!fd_and_buffer(env, info, "recv(fd: number, buffer: Buffer)", &fd, &data, &length)) return NULL;
  ssize_t n = receive(fd, data, length, 0);
  if (n == -EMSGSIZE) return throw_message(env, "recvmsg: fds truncated (MSG_CTRUNC)", 0);
  if (n < 0) return throw_message(env, "recvmsg", (int)-n);
  napi_value result;
  napi_create_int32(env, (int32_t)n, &result);
  return result;
}

static napi_value floor_take(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value result;
  if (head == tail) napi_get_null(env, &result);
  else napi_create_int32(env, queue[head++], &result);
  return result;
}

/* The duplicates enqueued for the next send. */
static int outbound[SCM_MAX_FD];
static int queued = 0;

static napi_value floor_enqueue(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok) {
    napi_throw_type_error(env, NULL, "enqueue(fd: number)");
    return NULL;
  }
  if (queued == SCM_MAX_FD) return throw_message(env, "enqueue: one send carries at most 253 fds", 0);
  int duplicate = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (duplicate < 0) return throw_message(env, "fcntl(F_DUPFD_CLOEXEC)", errno);
  outbound[queued++] = duplicate;
  return NULL;
}

/* Closes the duplicates queued, as fd-queue does: sorted, each run of neighbouring
 * numbers with one close_range (where the kernel has it), the others one by one. */
static void close_outbound(void) {
  for (int i = 1; i < queued; i++)
    for (int j = i; j > 0 && outbound[j - 1] > outbound[j]; j--) {
      int swap = outbound[j];
      outbound[j] = outbound[j - 1];
      outbound[j - 1] = swap;
    }
  static int no_close_range = 0;
  int start = 0;
  while (start < queued) {
    int end = start + 1;
    while (end < queued && outbound[end] == outbound[end - 1] + 1) end++;
    int closed = 0;
#ifdef SYS_close_range
    if (end - start > 1 && !no_close_range) {
      closed = syscall(SYS_close_range, outbound[start], outbound[end - 1], 0) == 0;
      if (!closed) no_close_range = 1;
    }
#endif
    if (!closed)
      for (int i = start; i < end; i++) close(outbound[i]);
    start = end;
  }
  queued = 0;
}

static napi_value floor_send(napi_env env, napi_callback_info info) {
  int32_t fd;
  void *data;
  size_t length;
  if (!fd_and_buffer(env, info, "send(fd: number, buffer: Buffer)", &fd, &data, &length)) return NULL;
  if (length == 0 && queued > 0) {
    napi_throw_error(env, NULL, "send: fds need at least one byte to ride on");
    return NULL;
  }
  union control control;
  size_t sent = 0;
  int error = 0;
  while (sent < length && !error) {
    struct iovec iov = {(char *)data + sent, length - sent};
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (sent == 0 && queued > 0) {
      msg.msg_control = control.buf;
      msg.msg_controllen = CMSG_SPACE(queued * sizeof(int));
      struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(queued * sizeof(int));
      memcpy(CMSG_DATA(c), outbound, queued * sizeof(int));
    }
    ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    /* Non-blocking once watched (uv_poll_init): a full socket is waited for here. */
    if (n < 0 && errno == EAGAIN) {
      struct pollfd room = {.fd = fd, .events = POLLOUT};
      if (poll(&room, 1, -1) >= 0 || errno == EINTR) continue;
    }
    if (n < 0) error = errno;
    else sent += (size_t)n;
  }
  /* Sent or not, the duplicates go: the kernel holds its own references. */
  close_outbound();
  if (error) return throw_message(env, "sendmsg", error);
  napi_value result;
  napi_create_int32(env, (int32_t)sent, &result);
  return result;
}

/* The round trip's read watch (see watch() above). */
static uv_poll_t watch_poll;
static int watch_open = 0;
static int watch_fd = -1;
static void *watch_data;
static size_t watch_length;
static napi_env watch_env;
static napi_ref watch_buffer, watch_callback;
static napi_async_context watch_context;
/* A read waits: wait() was called and its callback has not been made yet. */
static int watch_wanted = 0;

/* The watch stays started from one read to the next (the next is usually made by the
 * code the callback runs), as net.Socket keeps reading: no epoll_ctl per read. It stops
 * when readiness finds no read waiting (level-triggered, it would fire again at once). */
static void on_readable(uv_poll_t *handle, int status, int events) {
  (void)events;
  if (!watch_wanted) {
    uv_poll_stop(handle);
    return;
  }
  ssize_t n = status < 0 ? status : receive(watch_fd, watch_data, watch_length, MSG_DONTWAIT);
  if (n == -EAGAIN) return;
  watch_wanted = 0;
  napi_env env = watch_env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value callback, receiver, count, thrown;
  napi_get_reference_value(env, watch_callback, &callback);
  napi_get_global(env, &receiver);
  napi_create_int32(env, (int32_t)n, &count);
  /* What the callback threw is reported as uncaught, as for any I/O callback. */
  if (napi_make_callback(env, watch_context, receiver, callback, 1, &count, NULL) != napi_ok &&
      napi_get_and_clear_last_exception(env, &thrown) == napi_ok)
    napi_fatal_exception(env, thrown);
  napi_close_handle_scope(env, scope);
}

static napi_value floor_watch(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], name;
  int32_t fd;
  uv_loop_t *loop;
  if (watch_open || napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      napi_get_buffer_info(env, argv[1], &watch_data, &watch_length) != napi_ok) {
    napi_throw_type_error(env, NULL, "watch(fd: number, buffer: Buffer, callback: Function), once");
    return NULL;
  }
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || uv_poll_init(loop, &watch_poll, fd) != 0)
    return throw_message(env, "uv_poll_init", 0);
  watch_open = 1;
  watch_fd = fd;
  watch_env = env;
  napi_create_reference(env, argv[1], 1, &watch_buffer);
  napi_create_reference(env, argv[2], 1, &watch_callback);
  napi_create_string_utf8(env, "floor", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, NULL, name, &watch_context);
  return NULL;
}

static napi_value floor_wait(napi_env env, napi_callback_info info) {
  (void)info;
  if (!watch_open) return throw_message(env, "wait: nothing watched", 0);
  watch_wanted = 1;
  if (uv_is_active((uv_handle_t *)&watch_poll)) return NULL;
  int error = uv_poll_start(&watch_poll, UV_READABLE, on_readable);
  if (error) return throw_message(env, "uv_poll_start", -error);
  return NULL;
}

static napi_value floor_unwatch(napi_env env, napi_callback_info info) {
  (void)info;
  if (watch_open) {
    uv_close((uv_handle_t *)&watch_poll, NULL);
    napi_delete_reference(env, watch_buffer);
    napi_delete_reference(env, watch_callback);
    napi_async_destroy(env, watch_context);
    watch_open = 0;
  }
  return NULL;
}

NAPI_MODULE_INIT() {
  static const struct {
    const char *name;
    napi_callback call;
  } functions[] = {
      {"recv", floor_recv},   {"take", floor_take},   {"enqueue", floor_enqueue},
      {"send", floor_send},   {"watch", floor_watch}, {"wait", floor_wait},
      {"unwatch", floor_unwatch}};
  for (size_t i = 0; i < sizeof functions / sizeof functions[0]; i++) {
    napi_value function;
    napi_create_function(env, functions[i].name, NAPI_AUTO_LENGTH, functions[i].call, NULL, &function);
    napi_set_named_property(env, exports, functions[i].name, function);
  }
  return exports;
}
