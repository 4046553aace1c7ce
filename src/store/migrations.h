/* The schema migrations compiled into the binary (see cmake/embed_migrations.cmake).
 * A file NNN_name.sql is shared by both backends; NNN_name.sqlite.sql and
 * NNN_name.pg.sql hold the parts where the dialects differ. */
#ifndef IOTFIN_STORE_MIGRATIONS_H
#define IOTFIN_STORE_MIGRATIONS_H

typedef struct {
  int version;
  const char *name;
  const char *dialect; /* "" for both, "sqlite" or "pg" */
  const char *sql;
} store_migration_t;

extern const store_migration_t store_migrations[];
extern const int store_migrations_count;

#endif
