/* What RETURNING costs an SQLite insert: 3,000 rows into a copy of the events table
 * (its indexes and AUTOINCREMENT), in one transaction from one prepared statement,
 * with `RETURNING seq` (argument "returning") or with sqlite3_last_insert_rowid()
 * (argument "rowid"). Meant to be counted, not timed:
 *
 *   valgrind --tool=callgrind --callgrind-out-file=/dev/null build/bench_returning returning
 *   valgrind --tool=callgrind --callgrind-out-file=/dev/null build/bench_returning rowid
 *
 * The difference of the two "Collected" counts over 3,000 is what RETURNING adds to
 * one insert; it is why store_last_rowid() exists (src/store/store.h). */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ROWS 3000

int main(int argc, char **argv) {
  if (argc != 2 || (strcmp(argv[1], "returning") != 0 && strcmp(argv[1], "rowid") != 0)) {
    fprintf(stderr, "usage: %s returning|rowid\n", argv[0]);
    return 2;
  }
  int returning = strcmp(argv[1], "returning") == 0;
  char path[] = "/tmp/bench_returning_XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) return 1;
  close(fd);
  sqlite3 *db;
  sqlite3_stmt *st = NULL;
  if (sqlite3_open(path, &db) != SQLITE_OK ||
      sqlite3_exec(db,
                   "PRAGMA journal_mode=WAL; CREATE TABLE events (seq INTEGER PRIMARY KEY "
                   "AUTOINCREMENT, id TEXT NOT NULL UNIQUE, type TEXT NOT NULL, source TEXT NOT "
                   "NULL, subject TEXT NOT NULL, time TEXT NOT NULL, data TEXT NOT NULL); "
                   "CREATE INDEX events_type ON events (type, seq); CREATE INDEX events_subject "
                   "ON events (subject, seq); BEGIN",
                   NULL, NULL, NULL) != SQLITE_OK ||
      sqlite3_prepare_v3(db,
                         returning ? "INSERT INTO events (id, type, source, subject, time, data) "
                                     "VALUES (?, ?, ?, ?, ?, ?) RETURNING seq"
                                   : "INSERT INTO events (id, type, source, subject, time, data) "
                                     "VALUES (?, ?, ?, ?, ?, ?)",
                         -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) != SQLITE_OK) {
    fprintf(stderr, "sqlite: %s\n", sqlite3_errmsg(db));
    return 1;
  }
  long long sum = 0;
  for (int i = 0; i < ROWS; i++) {
    char id[40], subject[40];
    snprintf(id, sizeof(id), "0193a%031d", i);
    snprintf(subject, sizeof(subject), "devices/%d", i % 50);
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, "device.command.queued", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, "/iotfin", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, subject, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, "2026-12-03T09:00:00.000Z", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, "{\"device_id\":\"d\",\"command_id\":\"c\",\"type\":\"bench.noop\"}",
                      -1, SQLITE_STATIC);
    while (sqlite3_step(st) == SQLITE_ROW)
      sum += sqlite3_column_int64(st, 0);
    if (!returning) sum += sqlite3_last_insert_rowid(db);
    sqlite3_reset(st);
  }
  sqlite3_finalize(st);
  sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
  sqlite3_close(db);
  char side[64];
  snprintf(side, sizeof(side), "%s-wal", path);
  unlink(side);
  snprintf(side, sizeof(side), "%s-shm", path);
  unlink(side);
  unlink(path);
  /* Both ways name the same rows: 1 + 2 + ... + ROWS. */
  if (sum != (long long)ROWS * (ROWS + 1) / 2) {
    fprintf(stderr, "rows numbered %lld, not %d..%d\n", sum, 1, ROWS);
    return 1;
  }
  printf("{\"rows\":%d,\"mode\":\"%s\"}\n", ROWS, argv[1]);
  return 0;
}
