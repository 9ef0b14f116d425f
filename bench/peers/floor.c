/*
 * fd-queue benchmark: the Node floor for a receiver. A Node-API addon with the least a
 * Node receiver can do under the read() contract of fd-queue's async classes: one
 * recvmsg per read, the fds that came with it queued for a dequeue call each. No event
 * loop (recvmsg blocks: cheaper than any readiness wait), no ordering between reads, no
 * cancellation, no checks beyond what C needs: a measuring stick, not a library.
 *
 *   recv(fd, buffer) -> bytes received into buffer (0 at end of stream)
 *   take()           -> the oldest fd received and not yet taken, or null
 *
 * node-peer.mjs (api "floor") runs the AsyncUnixStream receiver's loop on it, so the
 * difference to AsyncUnixStream is what fd-queue costs over the floor.
 */
#include <errno.h>
#include <stdio.h>
#include <node_api.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define SCM_MAX_FD 253
/* A power of two above SCM_MAX_FD: take() drains it between two recv() calls. */
#define RING 512

static int ring[RING];
static unsigned head = 0, tail = 0;

static napi_value throw_errno(napi_env env, const char *what) {
  char message[128];
  snprintf(message, sizeof message, "%s: %s", what, strerror(errno));
  napi_throw_error(env, NULL, message);
  return NULL;
}

static napi_value floor_recv(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t fd;
  void *data;
  size_t length;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      napi_get_buffer_info(env, argv[1], &data, &length) != napi_ok) {
    napi_throw_type_error(env, NULL, "recv(fd: number, buffer: Buffer)");
    return NULL;
  }
  union {
    char buf[CMSG_SPACE(SCM_MAX_FD * sizeof(int))];
    struct cmsghdr align;
  } control;
  struct iovec iov = {data, length};
  struct msghdr msg = {0};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.buf;
  msg.msg_controllen = sizeof control.buf;
  ssize_t n;
  do n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0) return throw_errno(env, "recvmsg");
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
    int *got = (int *)CMSG_DATA(c);
    for (int i = 0; i < count; i++) {
      if (tail - head < RING) ring[(tail++) % RING] = got[i];
      else close(got[i]); /* not reached: take() drains the ring after every recv() */
    }
  }
  napi_value result;
  napi_create_int32(env, (int32_t)n, &result);
  return result;
}

static napi_value floor_take(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value result;
  if (head == tail) napi_get_null(env, &result);
  else napi_create_int32(env, ring[(head++) % RING], &result);
  return result;
}

NAPI_MODULE_INIT() {
  napi_value function;
  napi_create_function(env, "recv", NAPI_AUTO_LENGTH, floor_recv, NULL, &function);
  napi_set_named_property(env, exports, "recv", function);
  napi_create_function(env, "take", NAPI_AUTO_LENGTH, floor_take, NULL, &function);
  napi_set_named_property(env, exports, "take", function);
  return exports;
}
