/* Unit tests for src/http/defer.c, the gateway's bounded worker pools: work runs on
 * a thread named as asked, a full queue refuses at once, a stop answers queued work
 * as cancelled and joins, and a pool without a timer refuses deadlines. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <string.h>

#include "core/timeutil.h"
#include "http/defer.h"

typedef struct {
  sem_t started, release, done;
  atomic_int ran, cancelled;
  char thread_name[16];
} probe_t;

/* Holds its worker until the test releases it. */
static void blocking(void *item, bool cancelled) {
  probe_t *p = item;
  if (cancelled) {
    atomic_fetch_add(&p->cancelled, 1);
    sem_post(&p->done);
    return;
  }
  pthread_getname_np(pthread_self(), p->thread_name, sizeof(p->thread_name));
  sem_post(&p->started);
  sem_wait(&p->release);
  atomic_fetch_add(&p->ran, 1);
  sem_post(&p->done);
}

static void counting(void *item, bool cancelled) {
  probe_t *p = item;
  atomic_fetch_add(cancelled ? &p->cancelled : &p->ran, 1);
  sem_post(&p->done);
}

static void probe_init(probe_t *p) {
  memset(p, 0, sizeof(*p));
  sem_init(&p->started, 0, 0);
  sem_init(&p->release, 0, 0);
  sem_init(&p->done, 0, 0);
}

static void probe_free(probe_t *p) {
  sem_destroy(&p->started);
  sem_destroy(&p->release);
  sem_destroy(&p->done);
}

static void test_work_runs_on_a_thread_named_as_asked(void **state) {
  (void)state;
  probe_t p;
  probe_init(&p);
  http_defer_t *d = NULL;
  assert_int_equal(http_defer_start("http-write", 2, 4, 0, &d), 0);
  assert_int_equal(http_defer_submit(d, blocking, &p), 0);
  sem_wait(&p.started);
  assert_string_equal(p.thread_name, "http-write");
  sem_post(&p.release);
  sem_wait(&p.done);
  assert_int_equal(atomic_load(&p.ran), 1);
  http_defer_free(&d);
  assert_null(d);
  probe_free(&p);
}

static void test_a_full_queue_refuses_and_a_stop_cancels_what_waits(void **state) {
  (void)state;
  probe_t busy, queued;
  probe_init(&busy);
  probe_init(&queued);
  http_defer_t *d = NULL;
  assert_int_equal(http_defer_start("t", 1, 2, 0, &d), 0);
  /* The one worker is held, so the next two wait in the queue, which is then full. */
  assert_int_equal(http_defer_submit(d, blocking, &busy), 0);
  sem_wait(&busy.started);
  assert_int_equal(http_defer_submit(d, counting, &queued), 0);
  assert_int_equal(http_defer_submit(d, counting, &queued), 0);
  assert_int_equal(http_defer_submit(d, counting, &queued), -1);
  assert_int_equal(http_defer_pending(d), 3);
  /* A stop lets the running item finish and answers the waiting ones cancelled. */
  sem_post(&busy.release);
  http_defer_stop(d);
  assert_int_equal(atomic_load(&busy.ran), 1);
  assert_int_equal(atomic_load(&queued.ran) + atomic_load(&queued.cancelled), 2);
  assert_int_equal(http_defer_submit(d, counting, &queued), -1);
  http_defer_free(&d);
  probe_free(&busy);
  probe_free(&queued);
}

static void test_a_pool_without_a_timer_refuses_deadlines(void **state) {
  (void)state;
  probe_t p;
  probe_init(&p);
  http_defer_t *d = NULL;
  assert_int_equal(http_defer_start("t", 1, 1, 0, &d), 0);
  assert_int_equal(http_defer_at(d, time_mono_ms() + 10, counting, &p), -1);
  http_defer_free(&d);
  /* With a timer the same deadline fires. */
  assert_int_equal(http_defer_start("t", 1, 1, 1, &d), 0);
  assert_int_equal(http_defer_at(d, time_mono_ms() + 10, counting, &p), 0);
  sem_wait(&p.done);
  assert_int_equal(atomic_load(&p.ran), 1);
  http_defer_free(&d);
  probe_free(&p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_work_runs_on_a_thread_named_as_asked),
      cmocka_unit_test(test_a_full_queue_refuses_and_a_stop_cancels_what_waits),
      cmocka_unit_test(test_a_pool_without_a_timer_refuses_deadlines),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
