/* A small fixed-size registry guarded by one mutex. Updates are a hash lookup and
 * an add, cheap next to a request; rendering walks the table in insertion order. */
#include "core/metrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SERIES 2048
#define MAX_DESC 128
#define MAX_COLLECTORS 16
#define NBUCKETS 12

static const double bucket_bounds[NBUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                               0.05,   0.1,   0.25,   0.5,   1.0,  5.0};

typedef struct {
  char *name, *labels;
  int kind; /* 0 counter/gauge, 1 histogram */
  double value, sum;
  unsigned long count, buckets[NBUCKETS];
} series_t;

typedef struct {
  char *name, *type, *help;
} desc_t;

/* lock guards every array below. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static series_t *table[MAX_SERIES];
static int order[MAX_SERIES], nseries;
static desc_t descs[MAX_DESC];
static int ndescs;
static struct {
  void (*fn)(void *);
  void *arg;
} collectors[MAX_COLLECTORS];
static int ncollectors;

static unsigned hash(const char *a, const char *b) {
  unsigned h = 2166136261u;
  for (; *a; a++)
    h = (h ^ (unsigned char)*a) * 16777619u;
  h = (h ^ '{') * 16777619u;
  for (; *b; b++)
    h = (h ^ (unsigned char)*b) * 16777619u;
  return h;
}

/* Caller must hold lock; h is hash(name, labels), taken before the lock so that
 * threads hold it for less. Returns NULL when the table is full. */
static series_t *find(unsigned h, const char *name, const char *labels, int kind) {
  h %= MAX_SERIES;
  for (int i = 0; i < MAX_SERIES; i++) {
    unsigned slot = (h + (unsigned)i) % MAX_SERIES;
    series_t *s = table[slot];
    if (!s) {
      if (nseries >= MAX_SERIES * 3 / 4) return NULL;
      s = calloc(1, sizeof(*s));
      if (!s) return NULL;
      s->name = strdup(name);
      s->labels = strdup(labels);
      s->kind = kind;
      table[slot] = s;
      order[nseries++] = (int)slot;
      return s;
    }
    if (strcmp(s->name, name) == 0 && strcmp(s->labels, labels) == 0) return s;
  }
  return NULL;
}

void metrics_describe(const char *name, const char *type, const char *help) {
  pthread_mutex_lock(&lock);
  for (int i = 0; i < ndescs; i++)
    if (strcmp(descs[i].name, name) == 0) goto out;
  if (ndescs < MAX_DESC) {
    descs[ndescs].name = strdup(name);
    descs[ndescs].type = strdup(type);
    descs[ndescs].help = strdup(help);
    ndescs++;
  }
out:
  pthread_mutex_unlock(&lock);
}

void metrics_counter_add(const char *name, const char *labels, double v) {
  unsigned h = hash(name, labels);
  pthread_mutex_lock(&lock);
  series_t *s = find(h, name, labels, 0);
  if (s) s->value += v;
  pthread_mutex_unlock(&lock);
}

void metrics_gauge_set(const char *name, const char *labels, double v) {
  unsigned h = hash(name, labels);
  pthread_mutex_lock(&lock);
  series_t *s = find(h, name, labels, 0);
  if (s) s->value = v;
  pthread_mutex_unlock(&lock);
}

void metrics_histogram_observe(const char *name, const char *labels, double v) {
  unsigned h = hash(name, labels);
  pthread_mutex_lock(&lock);
  series_t *s = find(h, name, labels, 1);
  if (s) {
    s->count++;
    s->sum += v;
    for (int i = 0; i < NBUCKETS; i++)
      if (v <= bucket_bounds[i]) s->buckets[i]++;
  }
  pthread_mutex_unlock(&lock);
}

void metrics_add_collector(void (*fn)(void *arg), void *arg) {
  pthread_mutex_lock(&lock);
  if (ncollectors < MAX_COLLECTORS) {
    collectors[ncollectors].fn = fn;
    collectors[ncollectors].arg = arg;
    ncollectors++;
  }
  pthread_mutex_unlock(&lock);
}

typedef struct {
  char *buf;
  size_t len, cap;
} sbuf_t;

static void sb_printf(sbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf_t *b, const char *fmt, ...) {
  va_list ap;
  for (;;) {
    va_start(ap, fmt);
    int n = vsnprintf(b->buf + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < b->cap - b->len) {
      b->len += (size_t)n;
      return;
    }
    size_t cap = (b->cap + (size_t)n + 1) * 2;
    char *nb = realloc(b->buf, cap);
    if (!nb) return;
    b->buf = nb;
    b->cap = cap;
  }
}

static void render_labels(sbuf_t *b, const char *labels, const char *extra) {
  if (!*labels && !extra) return;
  sb_printf(b, "{%s%s%s}", labels, (*labels && extra) ? "," : "", extra ? extra : "");
}

char *metrics_render(void) {
  pthread_mutex_lock(&lock);
  int nc = ncollectors;
  typeof(collectors[0]) cs[MAX_COLLECTORS];
  memcpy(cs, collectors, sizeof(cs));
  pthread_mutex_unlock(&lock);
  for (int i = 0; i < nc; i++)
    cs[i].fn(cs[i].arg); /* outside the lock: they set gauges */

  sbuf_t b = {malloc(4096), 0, 4096};
  if (!b.buf) return NULL;
  b.buf[0] = 0;
  pthread_mutex_lock(&lock);
  for (int d = 0; d < ndescs; d++) {
    bool any = false;
    for (int i = 0; i < nseries; i++) {
      series_t *s = table[order[i]];
      if (strcmp(s->name, descs[d].name) != 0) continue;
      if (!any) {
        sb_printf(&b, "# HELP %s %s\n# TYPE %s %s\n", s->name, descs[d].help, s->name,
                  descs[d].type);
        any = true;
      }
      if (s->kind == 0) {
        sb_printf(&b, "%s", s->name);
        render_labels(&b, s->labels, NULL);
        sb_printf(&b, " %.17g\n", s->value);
        continue;
      }
      for (int k = 0; k <= NBUCKETS; k++) {
        char le[48];
        if (k < NBUCKETS)
          snprintf(le, sizeof(le), "le=\"%g\"", bucket_bounds[k]);
        else
          snprintf(le, sizeof(le), "le=\"+Inf\"");
        sb_printf(&b, "%s_bucket", s->name);
        render_labels(&b, s->labels, le);
        sb_printf(&b, " %lu\n", k < NBUCKETS ? s->buckets[k] : s->count);
      }
      sb_printf(&b, "%s_sum", s->name);
      render_labels(&b, s->labels, NULL);
      sb_printf(&b, " %.17g\n%s_count", s->sum, s->name);
      render_labels(&b, s->labels, NULL);
      sb_printf(&b, " %lu\n", s->count);
    }
  }
  pthread_mutex_unlock(&lock);
  return b.buf;
}

void metrics_reset(void) {
  pthread_mutex_lock(&lock);
  for (int i = 0; i < MAX_SERIES; i++) {
    if (!table[i]) continue;
    free(table[i]->name);
    free(table[i]->labels);
    free(table[i]);
    table[i] = NULL;
  }
  nseries = 0;
  for (int i = 0; i < ndescs; i++) {
    free(descs[i].name);
    free(descs[i].type);
    free(descs[i].help);
  }
  ndescs = 0;
  ncollectors = 0;
  pthread_mutex_unlock(&lock);
}
