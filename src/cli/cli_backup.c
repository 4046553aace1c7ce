/* `iotfin backup FILE` and `iotfin restore FILE`: one file holds everything a data dir
 * needs: a consistent snapshot of the SQLite database (VACUUM INTO, which reads in one
 * transaction while `serve` goes on writing), the signing keys, the admin token, and the
 * broker spool (device messages acknowledged but perhaps not yet stored). The file is a
 * POSIX tar archive, so `tar tf` can list it; restore reads only the names it wrote,
 * as regular files, so an archive cannot write outside the data dir. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "core/config.h"
#include "core/files.h"

#define BLOCK 512

static const char *usage_backup =
    "Usage: iotfin backup FILE\n"
    "\n"
    "Writes one file with everything the data dir (IOTFIN_DATA_DIR) needs: a consistent\n"
    "snapshot of the database, taken while `iotfin serve` runs, the signing keys, the\n"
    "admin token and the broker's spool. With IOTFIN_DB=postgres://... only the keys and\n"
    "the admin token are saved: back the database up with pg_dump (docs/operating.md).\n"
    "The file holds secrets: it is written with mode 0600.\n";

static const char *usage_restore =
    "Usage: iotfin restore FILE\n"
    "\n"
    "Fills an empty (or not yet existing) data dir (IOTFIN_DATA_DIR) from a file written by\n"
    "`iotfin backup`. It refuses a data dir that holds anything. Start `iotfin serve` on it\n"
    "afterwards: it has everything the snapshot had and accepts the tokens it had issued.\n";

/* --- writing ----------------------------------------------------------------------- */

static int write_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n) {
    ssize_t w = write(fd, c, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    c += w;
    n -= (size_t)w;
  }
  return 0;
}

/* A ustar header for a regular file (or a directory when dir is set). */
static void tar_header(unsigned char h[BLOCK], const char *name, size_t size, bool dir) {
  memset(h, 0, BLOCK);
  snprintf((char *)h, 100, "%s", name);
  snprintf((char *)h + 100, 8, "%07o", dir ? 0700 : 0600);
  snprintf((char *)h + 108, 8, "%07o", 0);
  snprintf((char *)h + 116, 8, "%07o", 0);
  snprintf((char *)h + 124, 12, "%011llo", (unsigned long long)size);
  snprintf((char *)h + 136, 12, "%011llo", (unsigned long long)time(NULL));
  h[156] = dir ? '5' : '0';
  memcpy(h + 257, "ustar", 6);
  memcpy(h + 263, "00", 2);
  memset(h + 148, ' ', 8);
  unsigned sum = 0;
  for (int i = 0; i < BLOCK; i++)
    sum += h[i];
  snprintf((char *)h + 148, 8, "%06o", sum);
}

/* Appends the file at path to the archive as name. 0, or -1 with errno. A missing file
 * is skipped (returns 1) when optional. */
static int tar_add(int out, const char *path, const char *name, bool optional) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return optional && errno == ENOENT ? 1 : -1;
  struct stat sb;
  if (fstat(fd, &sb) < 0) {
    close(fd);
    return -1;
  }
  unsigned char h[BLOCK];
  tar_header(h, name, (size_t)sb.st_size, false);
  int rc = write_all(out, h, BLOCK);
  char buf[65536];
  size_t total = 0;
  while (rc == 0) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) rc = -1;
    if (n <= 0) break;
    /* A file that grows while we read it (it should not) is cut at its size. */
    size_t take = (size_t)n;
    if (total + take > (size_t)sb.st_size) take = (size_t)sb.st_size - total;
    rc = write_all(out, buf, take);
    total += take;
  }
  close(fd);
  if (rc == 0 && total < (size_t)sb.st_size) {
    errno = EIO;
    rc = -1;
  }
  size_t pad = (BLOCK - total % BLOCK) % BLOCK;
  memset(buf, 0, BLOCK);
  if (rc == 0 && pad) rc = write_all(out, buf, pad);
  return rc;
}

/* Adds every regular file of dir/sub whose name ends in suffix (NULL: any) as sub/name. */
static int tar_add_dir(int out, const char *dir, const char *sub, const char *suffix) {
  char path[1400];
  snprintf(path, sizeof(path), "%s/%s", dir, sub);
  DIR *d = opendir(path);
  if (!d) return errno == ENOENT ? 0 : -1;
  struct dirent *e;
  int rc = 0;
  while (rc == 0 && (e = readdir(d))) {
    size_t l = strlen(e->d_name);
    if (e->d_name[0] == '.' ||
        (suffix && (l < strlen(suffix) || strcmp(e->d_name + l - strlen(suffix), suffix) != 0)))
      continue;
    char file[1700], name[400];
    snprintf(file, sizeof(file), "%s/%s", path, e->d_name);
    snprintf(name, sizeof(name), "%s/%s", sub, e->d_name);
    struct stat sb;
    if (stat(file, &sb) == 0 && S_ISREG(sb.st_mode)) rc = tar_add(out, file, name, true) < 0;
  }
  closedir(d);
  return rc ? -1 : 0;
}

/* VACUUM INTO: a consistent, compact copy, taken in one read transaction. */
static int snapshot(const char *db_path, const char *into, char *err, size_t cap) {
  sqlite3 *db = NULL;
  int rc = sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READWRITE, NULL);
  if (rc != SQLITE_OK) {
    snprintf(err, cap, "cannot open %s: %s", db_path, db ? sqlite3_errmsg(db) : "out of memory");
    sqlite3_close(db);
    return -1;
  }
  sqlite3_busy_timeout(db, 10000);
  sqlite3_stmt *st = NULL;
  rc = sqlite3_prepare_v2(db, "VACUUM INTO ?", -1, &st, NULL);
  if (rc == SQLITE_OK) sqlite3_bind_text(st, 1, into, -1, SQLITE_STATIC);
  if (rc == SQLITE_OK) rc = sqlite3_step(st);
  if (rc != SQLITE_DONE)
    snprintf(err, cap, "snapshot of %s failed: %s", db_path, sqlite3_errmsg(db));
  sqlite3_finalize(st);
  sqlite3_close(db);
  return rc == SQLITE_DONE ? 0 : -1;
}

static int backup(const config_t *cfg, const char *file) {
  char tmp_db[1300], tmp_out[1300], err[1600] = "";
  snprintf(tmp_db, sizeof(tmp_db), "%s.db-snapshot", file);
  snprintf(tmp_out, sizeof(tmp_out), "%s.partial", file);
  unlink(tmp_db);
  bool sqlite = strncmp(cfg->db_url, "sqlite:", 7) == 0;
  struct stat sb;
  if (stat(cfg->data_dir, &sb) < 0 || !S_ISDIR(sb.st_mode)) {
    fprintf(stderr, "iotfin backup: no data dir at %s (IOTFIN_DATA_DIR)\n", cfg->data_dir);
    return 1;
  }
  if (sqlite && snapshot(cfg->db_url + 7, tmp_db, err, sizeof(err)) < 0) {
    fprintf(stderr, "iotfin backup: %s\n", err);
    unlink(tmp_db);
    return 1;
  }
  int out = open(tmp_out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (out < 0) {
    fprintf(stderr, "iotfin backup: cannot write %s: %s\n", tmp_out, strerror(errno));
    unlink(tmp_db);
    return 1;
  }
  char path[1300];
  int rc = 0;
  if (sqlite) rc = tar_add(out, tmp_db, "iotfin.db", false) < 0;
  snprintf(path, sizeof(path), "%s/admin-token", cfg->data_dir);
  if (!rc) rc = tar_add(out, path, "admin-token", true) < 0;
  if (!rc) rc = tar_add_dir(out, cfg->data_dir, "keys", NULL);
  /* Taken after the snapshot: a message stored since is applied again, harmlessly. */
  if (!rc && sqlite) rc = tar_add_dir(out, cfg->data_dir, "broker/spool", ".ifj");
  unsigned char end[2 * BLOCK] = {0};
  if (!rc) rc = write_all(out, end, sizeof(end));
  if (!rc) rc = fsync(out);
  int err_no = errno;
  close(out);
  unlink(tmp_db);
  if (rc || rename(tmp_out, file) < 0) {
    fprintf(stderr, "iotfin backup: cannot write %s: %s\n", file, strerror(rc ? err_no : errno));
    unlink(tmp_out);
    return 1;
  }
  printf("backup written to %s (%s)\n", file,
         sqlite ? "database snapshot, keys, admin token, spool"
                : "keys and admin token; back the PostgreSQL database up with pg_dump");
  return 0;
}

/* --- reading ----------------------------------------------------------------------- */

/* The only names restore writes, each below the data dir. */
static bool allowed(const char *name) {
  if (strcmp(name, "iotfin.db") == 0 || strcmp(name, "admin-token") == 0) return true;
  const char *base = NULL;
  if (strncmp(name, "keys/", 5) == 0) base = name + 5;
  if (strncmp(name, "broker/spool/", 13) == 0) base = name + 13;
  if (!base || !*base || base[0] == '.') return false;
  for (const char *p = base; *p; p++)
    if (*p == '/' || *p == '\\' || (unsigned char)*p < 0x20) return false;
  return true;
}

static bool dir_empty(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return errno == ENOENT;
  struct dirent *e;
  bool empty = true;
  while (empty && (e = readdir(d)))
    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) empty = false;
  closedir(d);
  return empty;
}

static int restore(const config_t *cfg, const char *file) {
  if (!dir_empty(cfg->data_dir)) {
    fprintf(stderr,
            "iotfin restore: %s (IOTFIN_DATA_DIR) is not empty; restore needs an empty "
            "data dir\n",
            cfg->data_dir);
    return 1;
  }
  int in = open(file, O_RDONLY | O_CLOEXEC);
  if (in < 0) {
    fprintf(stderr, "iotfin restore: cannot read %s: %s\n", file, strerror(errno));
    return 1;
  }
  if (files_mkdir_p(cfg->data_dir) < 0) {
    fprintf(stderr, "iotfin restore: cannot create %s: %s\n", cfg->data_dir, strerror(errno));
    close(in);
    return 1;
  }
  unsigned char h[BLOCK];
  int files = 0, rc = 0;
  bool have_db = false;
  char why[300] = "";
  for (;;) {
    ssize_t n = read(in, h, BLOCK);
    if (n != BLOCK) {
      snprintf(why, sizeof(why), "truncated archive");
      rc = -1;
      break;
    }
    if (h[0] == 0) break; /* the end blocks */
    if (memcmp(h + 257, "ustar", 5) != 0) {
      snprintf(why, sizeof(why), "not a backup written by iotfin backup");
      rc = -1;
      break;
    }
    char name[101];
    snprintf(name, sizeof(name), "%.100s", (char *)h);
    char *end;
    unsigned long long size = strtoull((char *)h + 124, &end, 8);
    if (h[156] != '0' || !allowed(name) || size > (1ULL << 40)) {
      snprintf(why, sizeof(why), "unexpected entry %s in the archive", name);
      rc = -1;
      break;
    }
    char path[1400];
    snprintf(path, sizeof(path), "%s/%s", cfg->data_dir, name);
    char *slash = strrchr(path, '/');
    *slash = 0;
    if (files_mkdir_p(path) < 0) {
      snprintf(why, sizeof(why), "cannot create %s: %s", path, strerror(errno));
      rc = -1;
      break;
    }
    *slash = '/';
    int out = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (out < 0) {
      snprintf(why, sizeof(why), "cannot write %s: %s", path, strerror(errno));
      rc = -1;
      break;
    }
    unsigned long long left = size;
    char buf[65536];
    while (rc == 0 && left) {
      size_t want = left < sizeof(buf) ? (size_t)left : sizeof(buf);
      ssize_t got = read(in, buf, want);
      if (got <= 0 || write_all(out, buf, (size_t)got) < 0) {
        snprintf(why, sizeof(why), "cannot copy %s", name);
        rc = -1;
      } else {
        left -= (unsigned long long)got;
      }
    }
    if (rc == 0 && fsync(out) < 0) rc = -1;
    close(out);
    if (rc) break;
    size_t pad = (BLOCK - size % BLOCK) % BLOCK;
    if (pad && read(in, buf, pad) != (ssize_t)pad) {
      snprintf(why, sizeof(why), "truncated archive");
      rc = -1;
      break;
    }
    have_db |= strcmp(name, "iotfin.db") == 0;
    files++;
  }
  close(in);
  if (rc) {
    fprintf(stderr,
            "iotfin restore: %s: %s; the data dir %s is incomplete, empty it before "
            "trying again\n",
            file, why, cfg->data_dir);
    return 1;
  }
  printf("restored %d file(s) into %s%s\n", files, cfg->data_dir,
         have_db ? "" : " (no database: restore the PostgreSQL database with pg_restore)");
  return 0;
}

int cli_backup_main(int argc, char **argv, bool restoring) {
  const char *usage = restoring ? usage_restore : usage_backup;
  if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
    fputs(usage, stdout);
    return 0;
  }
  if (argc != 2 || argv[1][0] == '-') {
    fputs(usage, stderr);
    return 2;
  }
  static config_t cfg;
  if (config_load_or_say(&cfg, NULL) < 0) return 2;
  umask(077);
  return restoring ? restore(&cfg, argv[1]) : backup(&cfg, argv[1]);
}
