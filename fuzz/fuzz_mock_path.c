/* The partner mock's file lookup (partners/mock.c partner_mock_find_file): the
 * partner name and the path come from the request URL, so no input may reach a file
 * outside the mock folder. The target interposes access(2), which the lookup calls
 * before opening anything, and aborts on any path that, resolved lexically, leaves
 * the folder. Input: "<partner>\n<path>\n<method>". A file planted next to the mock
 * folder must never be returned either. */
#include <fcntl.h>
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "partners/mock.h"

static char root[64], mockdir[128];
static bool watching;
static long probes;

/* Resolves . and .. without touching the disk; false when it climbs above "/". */
static bool normalise(const char *in, char *out, size_t cap) {
  size_t n = 0;
  out[0] = 0;
  const char *p = in;
  while (*p) {
    while (*p == '/')
      p++;
    const char *e = strchr(p, '/');
    size_t l = e ? (size_t)(e - p) : strlen(p);
    if (l == 0) break;
    if (l == 1 && p[0] == '.') {
    } else if (l == 2 && p[0] == '.' && p[1] == '.') {
      if (n == 0) return false;
      while (n > 0 && out[n - 1] != '/')
        n--;
      if (n > 0) n--;
      out[n] = 0;
    } else {
      if (n + 1 + l + 1 > cap) return false;
      out[n++] = '/';
      memcpy(out + n, p, l);
      n += l;
      out[n] = 0;
    }
    p += l;
  }
  return true;
}

int access(const char *path, int mode) {
  if (watching) {
    char norm[4096];
    size_t ml = strlen(mockdir);
    if (!normalise(path, norm, sizeof(norm)) || strncmp(norm, mockdir, ml) != 0 ||
        (norm[ml] != '/' && norm[ml] != 0)) {
      fprintf(stderr, "mock lookup escaped its folder: %s\n", path);
      abort();
    }
    /* The lookup must stay cheap whatever the URL: a request is one thread's time. */
    if (++probes > 4096) {
      fprintf(stderr, "mock lookup probed more than 4096 paths for one request\n");
      abort();
    }
  }
  return faccessat(AT_FDCWD, path, mode, 0);
}

static void put(const char *rel, const char *text) {
  char path[512];
  snprintf(path, sizeof(path), "%s/%s", root, rel);
  for (char *s = strchr(path + strlen(root) + 1, '/'); s; s = strchr(s + 1, '/')) {
    *s = 0;
    mkdir(path, 0700);
    *s = '/';
  }
  FILE *f = fopen(path, "w");
  if (!f) abort();
  fputs(text, f);
  fclose(f);
}

static void cleanup(void) {
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", root);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  strcpy(root, "/tmp/iotfin-fuzz-mock-XXXXXX");
  if (!mkdtemp(root)) abort();
  snprintf(mockdir, sizeof(mockdir), "%s/mocks", root);
  put("mocks/kyc/verifications/POST.json", "{\"status\":201,\"body\":{}}");
  put("mocks/kyc/verifications/_/GET.json", "{\"status\":200,\"body\":{}}");
  put("mocks/bank/authorizations/POST.json", "{\"status\":200,\"body\":{}}");
  put("mocks/GET.json", "{\"outside_partner\":true}");
  put("secret/GET.json", "{\"secret\":true}");
  put("GET.json", "{\"secret\":true}");
  atexit(cleanup);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *in = malloc(size + 1);
  memcpy(in, data, size);
  in[size] = 0;
  char *partner = in, *path = strchr(partner, '\n'), *method = NULL;
  if (path) {
    *path++ = 0;
    method = strchr(path, '\n');
    if (method) *method++ = 0;
  }
  watching = true;
  probes = 0;
  json_t *f = partner_mock_find_file(mockdir, partner, path ? path : "", method ? method : "GET");
  watching = false;
  if (json_object_get(f, "secret")) abort();
  json_decref(f);
  free(in);
  return 0;
}
