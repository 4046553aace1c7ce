/* Process-wide metrics in the Prometheus text format. Counters and histograms are
 * kept here; gauges that mirror state elsewhere (queue depths, devices online) are
 * computed at scrape time by collectors. Every name starts with iotfin_. */
#ifndef IOTFIN_CORE_METRICS_H
#define IOTFIN_CORE_METRICS_H

#include <stdio.h>

/* Declares a metric's type ("counter", "gauge", "histogram") and help text. */
void metrics_describe(const char *name, const char *type, const char *help);
/* labels is the inside of {...}, e.g. route="/v1/x",status="200", or "". */
void metrics_counter_add(const char *name, const char *labels, double v);
void metrics_gauge_set(const char *name, const char *labels, double v);
/* Observes v (seconds for durations) into the standard latency buckets. */
void metrics_histogram_observe(const char *name, const char *labels, double v);
/* A function called at each scrape to set gauges with metrics_gauge_set. */
void metrics_add_collector(void (*fn)(void *arg), void *arg);
/* The whole exposition as a malloc'd string. */
char *metrics_render(void);
/* Forgets everything (tests). */
void metrics_reset(void);

#endif
