/* `iotfin migrate-store --to postgres://...`: moves the store of a SQLite data dir into an
 * empty PostgreSQL database, so that `serve` goes on there with everything it had. Both
 * stores are opened through src/store (each migrated to this binary's schema), the tables
 * are found in the SQLite catalogue and ordered by their foreign keys, and every row is
 * copied in one PostgreSQL transaction, ids and sequence numbers as they were; then the
 * identity sequences are moved past them and the row counts are compared. The SQLite
 * file is only read; the admin token and broker files stay in the data dir (the signing
 * keys are a table, copied like the others). */
#include <errno.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cli/cli.h"
#include "core/config.h"
#include "core/errors.h"
#include "core/log.h"
#include "core/timeutil.h"
#include "store/store.h"

static const char *usage =
    "Usage: iotfin migrate-store --to postgres://USER:PASS@HOST:PORT/DB [--data-dir DIR]\n"
    "\n"
    "Copies the store of a SQLite data dir into an empty PostgreSQL database, so that\n"
    "`iotfin serve` runs on PostgreSQL from then on with everything it had (docs/scaling.md).\n"
    "\n"
    "  --to URL        the target database (a libpq URI, as IOTFIN_DB takes it); it must\n"
    "                  exist; iotfin's tables are created in it; it must hold no rows\n"
    "  --data-dir DIR  the data dir (default: IOTFIN_DATA_DIR, else ./iotfin-data); the\n"
    "                  source is IOTFIN_DB when it names sqlite:PATH, else DIR/iotfin.db\n"
    "\n"
    "Stop `iotfin serve` first: a database in use is refused, and a serve started during\n"
    "the copy cannot open it. Every table is copied in one transaction (all or nothing),\n"
    "ids and event sequence numbers unchanged, and the row counts are checked. The SQLite\n"
    "file is left as it was; the signing keys, a table, go with the rest. The admin token\n"
    "and the broker's files stay in the data dir: keep it, and start serve with the same\n"
    "IOTFIN_DATA_DIR and IOTFIN_DB=<the --to URL>.\n"
    "Exit status: 0 copied, 1 refused or failed (one line says why), 2 bad arguments.\n";

#define MAX_TABLES 64
/* store_exec binds at most 64 values per statement (store_pg.c); a wider table could
 * not be inserted a row at a time. */
#define MAX_BIND 64
#define NAME_CAP 64

/* The store's own bookkeeping, not data: the target has its own from its migrations. */
static const char *const skipped[] = {"schema_migrations", "store_probe"};

typedef struct {
  char name[NAME_CAP];
  int ncols;
  char cols[MAX_BIND][NAME_CAP];
  /* How a value reaches PostgreSQL: 't' text as is, 'i' an integer, 'r' a double. */
  char kind[MAX_BIND];
  char pgtype[MAX_BIND][24]; /* the CAST target for 'i' and 'r' */
  char identity[NAME_CAP];   /* the target's identity (or serial) column, "" when none */
  char refs[MAX_TABLES][NAME_CAP];
  int nrefs;
  int64_t src_rows, copied, dst_rows, seq_floor; /* seq_floor: SQLite's AUTOINCREMENT mark */
  bool placed;
} mtable_t;

typedef struct {
  sqlite3 *src;
  mtable_t tables[MAX_TABLES];
  int ntables;
  int order[MAX_TABLES]; /* indexes into tables, referenced tables first */
  int64_t src_version, dst_version;
  char why[600]; /* set by the callbacks on refusal */
} migrate_t;

/* --- arguments ------------------------------------------------------------------- */

static const char *data_dir_arg;

static const char *env_get(const char *name) {
  if (data_dir_arg && strcmp(name, "IOTFIN_DATA_DIR") == 0) return data_dir_arg;
  return getenv(name);
}

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("iotfin migrate-store: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  return 1;
}

/* Names are spliced into SQL, so only the plain ones iotfin's migrations use pass. */
static bool plain_name(const char *s) {
  if (!*s || strlen(s) >= NAME_CAP) return false;
  for (const char *p = s; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_')) return false;
  return true;
}

static bool is_skipped(const char *name) {
  for (size_t i = 0; i < sizeof(skipped) / sizeof(skipped[0]); i++)
    if (strcmp(name, skipped[i]) == 0) return true;
  return false;
}

static mtable_t *find_table(migrate_t *m, const char *name) {
  for (int i = 0; i < m->ntables; i++)
    if (strcmp(m->tables[i].name, name) == 0) return &m->tables[i];
  return NULL;
}

static int find_col(const mtable_t *t, const char *name) {
  for (int i = 0; i < t->ncols; i++)
    if (strcmp(t->cols[i], name) == 0) return i;
  return -1;
}

/* --- the source ------------------------------------------------------------------ */

/* Opens the SQLite file for the copy and takes it for itself: in WAL mode an exclusive
 * transaction is refused while any other connection (a running serve) has the file
 * open, and while it is held a serve that starts waits instead of writing. */
static int source_take(const char *path, sqlite3 **out, char *why, size_t cap) {
  sqlite3 *db = NULL;
  int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL);
  if (rc == SQLITE_OK) rc = sqlite3_exec(db, "PRAGMA locking_mode=EXCLUSIVE", NULL, NULL, NULL);
  if (rc == SQLITE_OK) rc = sqlite3_exec(db, "BEGIN EXCLUSIVE", NULL, NULL, NULL);
  if (rc == SQLITE_OK) {
    *out = db;
    return 0;
  }
  if (rc == SQLITE_BUSY || rc == SQLITE_LOCKED)
    snprintf(why, cap,
             "%s is in use (is `iotfin serve` running on this data dir?); stop it and try "
             "again",
             path);
  else
    snprintf(why, cap, "cannot open %s: %s", path, db ? sqlite3_errmsg(db) : "out of memory");
  sqlite3_close(db);
  return -1;
}

/* Runs a query on the source; 0 or -1 with why set. The statement is in *st. */
static int src_prepare(migrate_t *m, sqlite3_stmt **st, const char *sql) {
  if (sqlite3_prepare_v2(m->src, sql, -1, st, NULL) == SQLITE_OK) return 0;
  snprintf(m->why, sizeof(m->why), "reading the SQLite catalogue failed: %s",
           sqlite3_errmsg(m->src));
  return -1;
}

/* Tables, columns, foreign keys, row counts and AUTOINCREMENT marks of the source. */
static int source_catalogue(migrate_t *m) {
  sqlite3_stmt *st = NULL;
  if (src_prepare(m, &st,
                  "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT "
                  "LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name") < 0)
    return -1;
  int rc = 0;
  while (rc == 0 && sqlite3_step(st) == SQLITE_ROW) {
    const char *name = (const char *)sqlite3_column_text(st, 0);
    if (is_skipped(name)) continue;
    if (!plain_name(name) || m->ntables == MAX_TABLES) {
      snprintf(m->why, sizeof(m->why), "the SQLite store has a table %s it cannot copy", name);
      rc = -1;
      break;
    }
    snprintf(m->tables[m->ntables++].name, NAME_CAP, "%s", name);
  }
  sqlite3_finalize(st);
  for (int i = 0; rc == 0 && i < m->ntables; i++) {
    mtable_t *t = &m->tables[i];
    char sql[256];
    snprintf(sql, sizeof(sql), "SELECT name FROM pragma_table_info('%s') ORDER BY cid", t->name);
    if (src_prepare(m, &st, sql) < 0) return -1;
    while (rc == 0 && sqlite3_step(st) == SQLITE_ROW) {
      const char *col = (const char *)sqlite3_column_text(st, 0);
      if (!plain_name(col) || t->ncols == MAX_BIND) {
        snprintf(m->why, sizeof(m->why), "the SQLite table %s has a column %s it cannot copy",
                 t->name, col);
        rc = -1;
      } else {
        snprintf(t->cols[t->ncols++], NAME_CAP, "%s", col);
      }
    }
    sqlite3_finalize(st);
    snprintf(sql, sizeof(sql), "SELECT DISTINCT \"table\" FROM pragma_foreign_key_list('%s')",
             t->name);
    if (rc == 0 && src_prepare(m, &st, sql) < 0) return -1;
    while (rc == 0 && sqlite3_step(st) == SQLITE_ROW) {
      const char *ref = (const char *)sqlite3_column_text(st, 0);
      if (strcmp(ref, t->name) == 0) {
        /* Rows of one table are copied in rowid order, which need not be the order of
         * a reference between them. No iotfin table has one. */
        snprintf(m->why, sizeof(m->why),
                 "the SQLite table %s refers to itself; migrate-store cannot order its rows",
                 t->name);
        rc = -1;
      } else if (t->nrefs < MAX_TABLES) {
        snprintf(t->refs[t->nrefs++], NAME_CAP, "%s", ref);
      }
    }
    sqlite3_finalize(st);
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM \"%s\"", t->name);
    if (rc == 0 && src_prepare(m, &st, sql) < 0) return -1;
    if (rc == 0 && sqlite3_step(st) == SQLITE_ROW) t->src_rows = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
  }
  if (rc == 0 && sqlite3_prepare_v2(m->src, "SELECT name, seq FROM sqlite_sequence", -1, &st,
                                    NULL) == SQLITE_OK) {
    while (sqlite3_step(st) == SQLITE_ROW) {
      mtable_t *t = find_table(m, (const char *)sqlite3_column_text(st, 0));
      if (t) t->seq_floor = sqlite3_column_int64(st, 1);
    }
    sqlite3_finalize(st);
  } /* no sqlite_sequence: no AUTOINCREMENT table has had a row yet */
  if (rc == 0 &&
      src_prepare(m, &st, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations") == 0) {
    if (sqlite3_step(st) == SQLITE_ROW) m->src_version = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
  }
  return rc;
}

/* Referenced tables first; a table whose references cannot be satisfied is refused. */
static int order_tables(migrate_t *m) {
  int placed = 0;
  while (placed < m->ntables) {
    bool progress = false;
    for (int i = 0; i < m->ntables; i++) {
      mtable_t *t = &m->tables[i];
      if (t->placed) continue;
      bool ready = true;
      for (int r = 0; r < t->nrefs && ready; r++) {
        mtable_t *ref = find_table(m, t->refs[r]);
        if (!ref) {
          snprintf(m->why, sizeof(m->why),
                   "the SQLite table %s refers to a table %s that is not there", t->name,
                   t->refs[r]);
          return -1;
        }
        ready = ref->placed;
      }
      if (!ready) continue;
      t->placed = true;
      m->order[placed++] = i;
      progress = true;
    }
    if (!progress) {
      snprintf(m->why, sizeof(m->why),
               "the foreign keys between the SQLite tables form a cycle; migrate-store cannot "
               "order them");
      return -1;
    }
  }
  return 0;
}

/* --- the target ------------------------------------------------------------------ */

/* Learns the target's tables and column types and checks they match the source. */
static int target_empty(migrate_t *m, store_tx_t *tx) {
  for (int i = 0; i < m->ntables; i++) {
    char sql[160];
    snprintf(sql, sizeof(sql), "SELECT 1 FROM %s LIMIT 1", m->tables[i].name);
    int n = store_exec(tx, NULL, sql, "");
    if (n < 0) return n;
    if (n > 0) {
      snprintf(m->why, sizeof(m->why),
               "the target database already holds data (table %s has rows); migrate-store "
               "only fills an empty one",
               m->tables[i].name);
      return -ERR_CONFLICT;
    }
  }
  return 0;
}

static int target_catalogue_tx(store_tx_t *tx, void *arg) {
  migrate_t *m = arg;
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations", "");
  if (n > 0) m->dst_version = store_rows_int(rows, 0, 0);
  store_rows_free(&rows);
  if (n < 0) return n;
  n = store_exec(
      tx, &rows,
      "SELECT c.table_name, c.column_name, c.data_type, c.is_identity, "
      "COALESCE(c.column_default, '') FROM information_schema.columns c "
      "JOIN information_schema.tables t ON t.table_schema = c.table_schema AND "
      "t.table_name = c.table_name AND t.table_type = 'BASE TABLE' "
      "WHERE c.table_schema = current_schema() ORDER BY c.table_name, c.ordinal_position",
      "");
  if (n < 0) return n;
  int rc = 0;
  int seen[MAX_TABLES][MAX_BIND] = {{0}};
  for (int i = 0; rc == 0 && i < n; i++) {
    const char *table = store_rows_text(rows, i, 0), *col = store_rows_text(rows, i, 1);
    const char *type = store_rows_text(rows, i, 2), *ident = store_rows_text(rows, i, 3);
    const char *dflt = store_rows_text(rows, i, 4);
    if (is_skipped(table)) continue;
    mtable_t *t = find_table(m, table);
    if (!t) continue; /* another program's table beside iotfin's: not ours to judge */
    int c = find_col(t, col);
    if (c < 0) {
      snprintf(m->why, sizeof(m->why),
               "the target's table %s has a column %s that the SQLite one lacks", table, col);
      rc = -ERR_CONFLICT;
      break;
    }
    seen[t - m->tables][c] = 1;
    if (strcmp(type, "text") == 0 || strcmp(type, "character varying") == 0) {
      t->kind[c] = 't';
    } else if (strcmp(type, "bigint") == 0 || strcmp(type, "integer") == 0 ||
               strcmp(type, "smallint") == 0) {
      t->kind[c] = 'i';
    } else if (strcmp(type, "double precision") == 0 || strcmp(type, "real") == 0) {
      t->kind[c] = 'r';
    } else {
      snprintf(m->why, sizeof(m->why),
               "the target's column %s.%s has type %s, which migrate-store does not know how "
               "to copy",
               table, col, type);
      rc = -ERR_CONFLICT;
      break;
    }
    snprintf(t->pgtype[c], sizeof(t->pgtype[c]), "%s", type);
    if (strcmp(ident, "YES") == 0 || strncmp(dflt, "nextval(", 8) == 0)
      snprintf(t->identity, NAME_CAP, "%s", col);
  }
  store_rows_free(&rows);
  for (int i = 0; rc == 0 && i < m->ntables; i++) {
    int have = 0;
    for (int c = 0; c < m->tables[i].ncols; c++)
      have += seen[i][c];
    for (int c = 0; rc == 0 && c < m->tables[i].ncols; c++)
      if (!seen[i][c]) {
        if (have)
          snprintf(m->why, sizeof(m->why), "the target lacks the column %s.%s", m->tables[i].name,
                   m->tables[i].cols[c]);
        else
          snprintf(m->why, sizeof(m->why), "the target lacks the table %s", m->tables[i].name);
        rc = -ERR_CONFLICT;
      }
  }
  return rc < 0 ? rc : target_empty(m, tx);
}

/* store_exec takes its values as variadic arguments, and a table's width is known only
 * at run time: pass all MAX_BIND slots and let types say how many are read (C allows
 * arguments beyond those a variadic function reads). */
static int exec_values(store_tx_t *tx, const char *sql, const char *types, const char **v) {
  _Static_assert(MAX_BIND == 64, "exec_values passes exactly MAX_BIND values");
  return store_exec(tx, NULL, sql, types, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8],
                    v[9], v[10], v[11], v[12], v[13], v[14], v[15], v[16], v[17], v[18], v[19],
                    v[20], v[21], v[22], v[23], v[24], v[25], v[26], v[27], v[28], v[29], v[30],
                    v[31], v[32], v[33], v[34], v[35], v[36], v[37], v[38], v[39], v[40], v[41],
                    v[42], v[43], v[44], v[45], v[46], v[47], v[48], v[49], v[50], v[51], v[52],
                    v[53], v[54], v[55], v[56], v[57], v[58], v[59], v[60], v[61], v[62], v[63]);
}

/* INSERT INTO t (cols) VALUES (...), ... for nrows rows, each value cast to its column's
 * type (every value is bound as text). Returns a malloc'd statement or NULL. */
static char *insert_sql(const mtable_t *t, int nrows) {
  size_t cap = 256 + (size_t)t->ncols * (NAME_CAP + 4) + (size_t)nrows * (size_t)t->ncols * 40;
  char *sql = malloc(cap);
  if (!sql) return NULL;
  size_t w = (size_t)snprintf(sql, cap, "INSERT INTO %s (", t->name);
  for (int c = 0; c < t->ncols; c++)
    w += (size_t)snprintf(sql + w, cap - w, "%s%s", c ? ", " : "", t->cols[c]);
  w += (size_t)snprintf(sql + w, cap - w, ") VALUES ");
  for (int r = 0; r < nrows; r++) {
    w += (size_t)snprintf(sql + w, cap - w, "%s(", r ? ", " : "");
    for (int c = 0; c < t->ncols; c++) {
      const char *sep = c ? ", " : "";
      if (t->kind[c] == 't')
        w += (size_t)snprintf(sql + w, cap - w, "%s?", sep);
      else
        w += (size_t)snprintf(sql + w, cap - w, "%sCAST(? AS %s)", sep, t->pgtype[c]);
    }
    w += (size_t)snprintf(sql + w, cap - w, ")");
  }
  return sql;
}

/* The values of one source row as text, checked against the target column's kind. */
static int row_values(migrate_t *m, const mtable_t *t, sqlite3_stmt *st, char **out) {
  for (int c = 0; c < t->ncols; c++) {
    int type = sqlite3_column_type(st, c);
    out[c] = NULL;
    if (type == SQLITE_NULL) continue;
    bool ok = type != SQLITE_BLOB && (t->kind[c] == 't' || type == SQLITE_INTEGER ||
                                      (t->kind[c] == 'r' && type == SQLITE_FLOAT));
    char num[40];
    const char *text = NULL;
    if (ok && t->kind[c] == 'r') {
      snprintf(num, sizeof(num), "%.17g", sqlite3_column_double(st, c));
      text = num;
    } else if (ok) {
      text = (const char *)sqlite3_column_text(st, c);
      /* PostgreSQL text cannot hold a NUL byte; SQLite's can. */
      ok = text && strlen(text) == (size_t)sqlite3_column_bytes(st, c);
    }
    if (!ok) {
      snprintf(m->why, sizeof(m->why),
               "%s.%s holds a value PostgreSQL's %s column cannot take (SQLite type %s)", t->name,
               t->cols[c], t->pgtype[c][0] ? t->pgtype[c] : "text",
               type == SQLITE_BLOB   ? "blob"
               : type == SQLITE_TEXT ? "text"
                                     : "number");
      return -ERR_CONFLICT;
    }
    out[c] = strdup(text);
    if (!out[c]) return -ERR_INTERNAL;
  }
  return 0;
}

static int copy_table(migrate_t *m, store_tx_t *tx, mtable_t *t) {
  int per = MAX_BIND / t->ncols; /* rows per INSERT */
  char select[MAX_BIND * (NAME_CAP + 2) + 64];
  size_t w = (size_t)snprintf(select, sizeof(select), "SELECT ");
  for (int c = 0; c < t->ncols; c++)
    w += (size_t)snprintf(select + w, sizeof(select) - w, "%s\"%s\"", c ? ", " : "", t->cols[c]);
  snprintf(select + w, sizeof(select) - w, " FROM \"%s\"", t->name);
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v2(m->src, select, -1, &st, NULL) != SQLITE_OK) {
    snprintf(m->why, sizeof(m->why), "reading %s failed: %s", t->name, sqlite3_errmsg(m->src));
    return -ERR_INTERNAL;
  }
  char types[MAX_BIND + 1];
  memset(types, 's', MAX_BIND);
  char *cells[MAX_BIND] = {0};
  char *full_sql = insert_sql(t, per);
  int rc = full_sql ? 0 : -ERR_INTERNAL, have = 0, step;
  while (rc == 0) {
    step = sqlite3_step(st);
    if (step == SQLITE_ROW) rc = row_values(m, t, st, cells + have * t->ncols);
    if (rc == 0 && step == SQLITE_ROW) have++;
    if (rc == 0 && step != SQLITE_ROW && step != SQLITE_DONE) {
      snprintf(m->why, sizeof(m->why), "reading %s failed: %s", t->name, sqlite3_errmsg(m->src));
      rc = -ERR_INTERNAL;
    }
    if (rc == 0 && have && (have == per || step != SQLITE_ROW)) {
      char *sql = have == per ? full_sql : insert_sql(t, have);
      types[have * t->ncols] = 0;
      int n = sql ? exec_values(tx, sql, types, (const char **)cells) : -ERR_INTERNAL;
      types[have * t->ncols] = 's';
      if (sql != full_sql) free(sql);
      if (n < 0) {
        snprintf(m->why, sizeof(m->why),
                 "writing %s into the target failed (the log line above says why); nothing was "
                 "kept",
                 t->name);
        rc = n;
      } else {
        t->copied += n;
      }
      for (int i = 0; i < have * t->ncols; i++) {
        free(cells[i]);
        cells[i] = NULL;
      }
      have = 0;
    }
    if (step != SQLITE_ROW) break;
  }
  for (int i = 0; i < MAX_BIND; i++)
    free(cells[i]);
  free(full_sql);
  sqlite3_finalize(st);
  return rc;
}

/* Moves the identity sequence past every id the source ever gave out, so that a new row
 * neither collides nor reuses an id a client may still hold. */
static int reset_sequence(migrate_t *m, store_tx_t *tx, const mtable_t *t) {
  if (!t->identity[0]) return 0;
  char sql[256];
  snprintf(sql, sizeof(sql), "SELECT COALESCE(MAX(%s), 0) FROM %s", t->identity, t->name);
  store_rows_t *rows = NULL;
  int n = store_exec(tx, &rows, sql, "");
  int64_t top = n > 0 ? store_rows_int(rows, 0, 0) : 0;
  store_rows_free(&rows);
  if (n < 0) return n;
  if (t->seq_floor > top) top = t->seq_floor;
  if (top <= 0) return 0;
  n = store_exec(tx, NULL, "SELECT setval(pg_get_serial_sequence(?, ?), ?)", "ssi", t->name,
                 t->identity, top);
  if (n < 0)
    snprintf(m->why, sizeof(m->why), "moving the sequence of %s.%s failed (see the log line)",
             t->name, t->identity);
  return n < 0 ? n : 0;
}

static int copy_tx(store_tx_t *tx, void *arg) {
  migrate_t *m = arg;
  /* Checked again in the copy's own transaction, so nothing can slip in between. */
  int rc = target_empty(m, tx);
  if (rc < 0) return rc;
  for (int i = 0; i < m->ntables; i++) {
    mtable_t *t = &m->tables[m->order[i]];
    rc = copy_table(m, tx, t);
    if (rc == 0) rc = reset_sequence(m, tx, t);
    if (rc < 0) return rc;
  }
  return 0;
}

static int count_tx(store_tx_t *tx, void *arg) {
  migrate_t *m = arg;
  for (int i = 0; i < m->ntables; i++) {
    char sql[160];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s", m->tables[i].name);
    store_rows_t *rows = NULL;
    int n = store_exec(tx, &rows, sql, "");
    if (n > 0) m->tables[i].dst_rows = store_rows_int(rows, 0, 0);
    store_rows_free(&rows);
    if (n < 0) return n;
  }
  return 0;
}

/* --- the command ----------------------------------------------------------------- */

static int migrate(const config_t *cfg, const char *to) {
  char src_path[1300], shown[1300];
  if (strncmp(cfg->db_url, "sqlite:", 7) == 0)
    snprintf(src_path, sizeof(src_path), "%s", cfg->db_url + 7);
  else
    snprintf(src_path, sizeof(src_path), "%s/iotfin.db", cfg->data_dir);
  store_redact_url(to, shown, sizeof(shown));
  struct stat sb;
  if (stat(src_path, &sb) < 0 || !S_ISREG(sb.st_mode))
    return fail("no SQLite database at %s (set IOTFIN_DATA_DIR or --data-dir)", src_path);

  static migrate_t m;
  memset(&m, 0, sizeof(m));
  store_t *sq = NULL, *pg = NULL;
  int status = 1;
  /* Before the store migrates the file: it must not change a schema a serve still uses. */
  if (source_take(src_path, &m.src, m.why, sizeof(m.why)) < 0) return fail("%s", m.why);
  sqlite3_close(m.src);
  m.src = NULL;
  char url[1320];
  snprintf(url, sizeof(url), "sqlite:%s", src_path);
  if (store_open(url, &sq) < 0)
    return fail("cannot open the SQLite store %s (the log line above says why)", src_path);
  store_close(&sq);
  if (store_open_wait(to, (int)cfg->db_wait_s, &pg) < 0)
    return fail("cannot open the target database %s (the log line above says why)", shown);
  int64_t t0 = time_mono_ms();
  if (source_take(src_path, &m.src, m.why, sizeof(m.why)) < 0) {
    fail("%s", m.why);
    goto cleanup;
  }
  if (source_catalogue(&m) < 0 || order_tables(&m) < 0) {
    fail("%s", m.why);
    goto cleanup;
  }
  int rc = store_read(pg, target_catalogue_tx, &m);
  if (rc < 0) {
    fail("%s", m.why[0] ? m.why : "cannot read the target database's catalogue");
    goto cleanup;
  }
  if (m.src_version != m.dst_version) {
    fail("the SQLite store is at schema version %lld but the target at %lld",
         (long long)m.src_version, (long long)m.dst_version);
    goto cleanup;
  }
  printf("copying %s (schema %lld) into %s\n", src_path, (long long)m.src_version, shown);
  fflush(stdout);
  rc = store_write(pg, copy_tx, &m);
  if (rc < 0) {
    fail("%s", m.why[0] ? m.why : "the target database failed during the copy; nothing was kept");
    goto cleanup;
  }
  rc = store_read(pg, count_tx, &m);
  if (rc < 0) {
    fail("the copy committed but counting the rows in the target failed");
    goto cleanup;
  }
  int64_t total = 0;
  bool match = true;
  for (int i = 0; i < m.ntables; i++) {
    const mtable_t *t = &m.tables[m.order[i]];
    bool ok = t->src_rows == t->copied && t->copied == t->dst_rows;
    match &= ok;
    total += t->dst_rows;
    printf("  %-16s %10lld%s\n", t->name, (long long)t->dst_rows,
           ok ? "" : "  MISMATCH (SQLite and PostgreSQL differ)");
  }
  if (!match) {
    fail("the row counts in the target differ from the SQLite store (listed above)");
    goto cleanup;
  }
  printf("copied %lld rows in %d tables in %.1f s; the counts match in the target\n",
         (long long)total, m.ntables, (double)(time_mono_ms() - t0) / 1000.0);
  printf("kept: %s, as it was; serve no longer uses it\n"
         "kept: the admin token and the broker's files in %s,\n"
         "      which serve still needs on PostgreSQL\n"
         "next: start iotfin serve with IOTFIN_DATA_DIR=%s IOTFIN_DB=%s\n",
         src_path, cfg->data_dir, cfg->data_dir, shown);
  status = 0;
cleanup:
  if (m.src) {
    sqlite3_exec(m.src, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_close(m.src);
  }
  store_close(&pg);
  return status;
}

int cli_migrate_store_main(int argc, char **argv) {
  const char *to = NULL;
  data_dir_arg = NULL;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      fputs(usage, stdout);
      return 0;
    }
    const char **slot = strncmp(a, "--to", 4) == 0          ? &to
                        : strncmp(a, "--data-dir", 10) == 0 ? &data_dir_arg
                                                            : NULL;
    size_t len = strncmp(a, "--to", 4) == 0 ? 4 : 10;
    if (slot && a[len] == '=') {
      *slot = a + len + 1;
    } else if (slot && a[len] == 0 && i + 1 < argc) {
      *slot = argv[++i];
    } else {
      fprintf(stderr, "iotfin migrate-store: unexpected argument %s\n\n%s", a, usage);
      return 2;
    }
  }
  if (!to) {
    fprintf(stderr, "iotfin migrate-store: --to URL is required\n\n%s", usage);
    return 2;
  }
  if (strncmp(to, "postgres://", 11) != 0 && strncmp(to, "postgresql://", 13) != 0) {
    fprintf(stderr, "iotfin migrate-store: --to must be a postgres:// or postgresql:// URL (the "
                    "target database)\n");
    return 2;
  }
  if (data_dir_arg && !*data_dir_arg) {
    fprintf(stderr, "iotfin migrate-store: --data-dir needs a folder\n");
    return 2;
  }
  static config_t cfg;
  if (config_load_or_say(&cfg, env_get) < 0) return 2;
  /* The store's progress lines are for a server's log; a command says what it did. */
  const char *lvl = getenv("IOTFIN_LOG_LEVEL");
  if (!lvl || (strcmp(lvl, "debug") != 0 && strcmp(lvl, "info") != 0)) log_set_level(LOG_WARN);
  return migrate(&cfg, to);
}
