/* Unit tests for src/services/catalogue.c: the event catalogue finds the types of
 * CONTRACT section 8, refuses unknown ones, and checks each type's data fields. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/errors.h"
#include "services/catalogue.h"

static void test_known_type_found(void **state) {
  (void)state;
  const catalogue_entry_t *e = catalogue_find("device.claimed");
  assert_non_null(e);
  assert_string_equal(e->type, "device.claimed");
  assert_string_equal(e->subject, "devices/<id>");
  assert_string_equal(e->fields, "device_id,serial,owner_id");
  assert_non_null(e->description);

  /* Every type CONTRACT section 8 requires at least. */
  const char *types[] = {"user.registration.requested",
                         "user.registration.approved",
                         "user.registration.rejected",
                         "session.revoked",
                         "device.claimed",
                         "device.activated",
                         "device.provisioning.failed",
                         "device.retired",
                         "device.connected",
                         "device.disconnected",
                         "device.event.received",
                         "device.command.queued",
                         "device.command.delivered",
                         "device.command.completed",
                         "device.command.expired",
                         "device.message.rejected",
                         "mail.sent",
                         "partner.webhook.received",
                         "queue.message.dead_lettered",
                         "alarm.raised",
                         "alarm.cleared"};
  for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
    e = catalogue_find(types[i]);
    if (!e) fail_msg("%s is not in the catalogue", types[i]);
    assert_string_equal(e->type, types[i]);
    /* subject is always set, as a <collection>/<key> pattern. */
    assert_non_null(e->subject);
    assert_non_null(strchr(e->subject, '/'));
    assert_non_null(strchr(e->subject, '<'));
  }
}

static void test_unknown_type_refused(void **state) {
  (void)state;
  const char *unknown[] = {
      "", "device", "device.claimed.extra", "Device.Claimed", "device.claimed ", "nope"};
  json_t *data = json_pack("{s:s}", "device_id", "d1");
  for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
    assert_null(catalogue_find(unknown[i]));
    assert_int_equal(catalogue_check(unknown[i], data), -ERR_VALIDATION_FAILED);
  }
  json_decref(data);
}

static void test_complete_data_accepted(void **state) {
  (void)state;
  json_t *data = json_pack("{s:s,s:s,s:s}", "device_id", "d1", "serial", "SN-1", "owner_id", "u1");
  assert_int_equal(catalogue_check("device.claimed", data), 0);
  /* Extra fields are fine: the catalogue lists what must be there. */
  json_object_set_new(data, "model", json_string("m"));
  assert_int_equal(catalogue_check("device.claimed", data), 0);
  json_decref(data);

  data = json_pack("{s:s}", "device_id", "d1");
  assert_int_equal(catalogue_check("device.retired", data), 0);
  json_decref(data);
}

static void test_missing_data_field_refused(void **state) {
  (void)state;
  /* Each required field of device.claimed in turn. */
  const char *fields[] = {"device_id", "serial", "owner_id"};
  for (size_t skip = 0; skip < 3; skip++) {
    json_t *data = json_object();
    for (size_t i = 0; i < 3; i++)
      if (i != skip) json_object_set_new(data, fields[i], json_string("x"));
    assert_int_equal(catalogue_check("device.claimed", data), -ERR_VALIDATION_FAILED);
    json_decref(data);
  }
  json_t *empty = json_object();
  assert_int_equal(catalogue_check("session.started", empty), -ERR_VALIDATION_FAILED);
  assert_int_equal(catalogue_check("device.retired", empty), -ERR_VALIDATION_FAILED);
  json_decref(empty);
  /* A field name must match exactly, not as a prefix. */
  json_t *data = json_pack("{s:s}", "device_id_x", "d1");
  assert_int_equal(catalogue_check("device.retired", data), -ERR_VALIDATION_FAILED);
  json_decref(data);
  /* Data that is not an object carries no fields. */
  json_t *arr = json_pack("[s]", "device_id");
  assert_int_equal(catalogue_check("device.retired", arr), -ERR_VALIDATION_FAILED);
  json_decref(arr);
  assert_int_equal(catalogue_check("device.retired", NULL), -ERR_VALIDATION_FAILED);
}

/* Every entry is well formed and satisfiable: build its data from its own field list
 * and check it passes, then drop the last field and check it fails. */
static void test_every_entry_checks_its_fields(void **state) {
  (void)state;
  char *doc = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&doc, &len);
  assert_non_null(f);
  catalogue_write_markdown(f);
  fclose(f);
  int rows = 0;
  for (char *line = strtok(doc, "\n"); line; line = strtok(NULL, "\n")) {
    char type[96], fields[256];
    if (sscanf(line, "| `%95[^`]` | `%*[^`]` | %255[^|]|", type, fields) != 2) continue;
    rows++;
    size_t fl = strlen(fields);
    while (fl && fields[fl - 1] == ' ')
      fields[--fl] = 0;
    const catalogue_entry_t *e = catalogue_find(type);
    if (!e) fail_msg("markdown lists %s but catalogue_find does not", type);
    assert_string_equal(e->fields, fields);

    json_t *data = json_object();
    char *copy = strdup(fields), *save = NULL, *last = NULL;
    for (char *name = strtok_r(copy, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
      json_object_set_new(data, name, json_string("v"));
      last = name;
    }
    assert_int_equal(catalogue_check(type, data), 0);
    assert_non_null(last);
    json_object_del(data, last);
    assert_int_equal(catalogue_check(type, data), -ERR_VALIDATION_FAILED);
    json_decref(data);
    free(copy);
  }
  assert_true(rows >= 20);
  free(doc);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_known_type_found),
      cmocka_unit_test(test_unknown_type_refused),
      cmocka_unit_test(test_complete_data_accepted),
      cmocka_unit_test(test_missing_data_field_refused),
      cmocka_unit_test(test_every_entry_checks_its_fields),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
