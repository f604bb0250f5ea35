// Clients that hang up at random, for bench/http_bench.sh: each of N
// threads loops connect, send one synchronous call, wait a random 0-500 us,
// close -- before or after the answer. A call still running when its
// client leaves is detached; one still queued is withdrawn.
//
//   http_disconnect PORT SECONDS THREADS [EXPORT ARGS]
// (EXPORT of the add example, default add; ARGS like 40,2.)
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int port;
static double seconds;
static char request[512];
static atomic_long hung_up, failed;

static double Now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void* Client(void* arg) {
  unsigned seed = (unsigned)(uintptr_t)arg;
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  size_t len = strlen(request);
  for (double end = Now() + seconds; Now() < end;) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr*)&addr, sizeof addr) != 0 ||
        send(fd, request, len, MSG_NOSIGNAL) != (ssize_t)len) {
      failed++;
      close(fd);
      usleep(1000);
      continue;
    }
    struct timespec wait = {0, (long)(rand_r(&seed) % 500) * 1000};
    nanosleep(&wait, NULL);
    close(fd);
    hung_up++;
  }
  return NULL;
}

int main(int argc, char** argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s PORT SECONDS THREADS [EXPORT ARGS]\n", argv[0]);
    return 64;
  }
  port = atoi(argv[1]);
  seconds = atof(argv[2]);
  int threads = atoi(argv[3]);
  const char* fn = argc > 4 ? argv[4] : "add";
  const char* args = argc > 5 ? argv[5] : "40,2";
  char body[128];
  snprintf(body, sizeof body, "{\"args\":[%s]}", args);
  snprintf(request, sizeof request,
           "POST /v1/modules/add/call/%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
           "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
           fn, port, strlen(body), body);
  pthread_t tids[64];
  if (threads > 64) threads = 64;
  for (int i = 0; i < threads; i++) pthread_create(&tids[i], NULL, Client, (void*)(uintptr_t)(i + 1));
  for (int i = 0; i < threads; i++) pthread_join(tids[i], NULL);
  printf("disconnecting clients: %ld connections hung up, %ld failed to connect\n", (long)hung_up, (long)failed);
  return 0;
}
