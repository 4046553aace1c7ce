/* Runs and supervises the managed mosquitto process. Its log lines are read from a
 * pipe and re-logged as JSON, so standard error stays one JSON object per line.
 * A supervisor thread reaps the process; an unexpected exit is logged, the spool the
 * dead broker leaves is stored, and the broker is restarted on the same port.
 *
 * Where the data dir and the binary live does not matter: mosquitto started as root
 * drops to an unprivileged user before it loads plugins, so everything it needs after
 * that is handed over as an open file descriptor (the plugin as /proc/self/fd/N, the
 * spool directory, the start state in a memfd), never as a path it must reach. */
#include "hub/broker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/errors.h"
#include "core/log.h"
#include "core/timeutil.h"
#include "hub/spool.h"
#include "services/devices.h"

struct hub_broker {
  app_t *app;
  const config_t *cfg;
  char dir[1100], conf_path[1200], spool_path[1200], plugin_path[PATH_MAX], exe[PATH_MAX];
  char password[128];
  int port;
  /* Open for the broker's lifetime and inherited by each launch; state_fd is new per
   * launch (keys rotate, revocations grow). */
  int plugin_fd, spool_fd, state_fd;
  int cert_fd, key_fd; /* IOTFIN_MQTT_TLS_CERT/KEY, or -1 */
  /* The broker's last error line, for a start that fails: its reason, not a guess.
   * Guarded by err_lock (written by the log relay thread). */
  pthread_mutex_t err_lock;
  char last_error[512];
  int64_t launched_ms; /* when the running broker came up (supervisor and start only) */
  /* pid and the pipes are written by the supervisor thread and by start/stop on
   * the main thread; stopping tells the supervisor not to restart. */
  atomic_int pid;
  atomic_bool stopping;
  int parent_pipe[2]; /* [1] stays open in iotfin for the broker's lifetime */
  pthread_t supervisor;
};

static int free_port(const char *host) {
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai;
  if (getaddrinfo(host, "0", &hints, &ai) != 0) return -1;
  int port = -1;
  int fd = socket(ai->ai_family, SOCK_STREAM, 0);
  if (fd >= 0 && bind(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0)
      port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                           : ((struct sockaddr_in6 *)&ss)->sin6_port);
  }
  if (fd >= 0) close(fd);
  freeaddrinfo(ai);
  return port;
}

static bool port_accepts(const char *host, int port) {
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai;
  char ps[16];
  snprintf(ps, sizeof(ps), "%d", port);
  if (getaddrinfo(host, ps, &hints, &ai) != 0) return false;
  int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  bool ok = fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) == 0;
  if (fd >= 0) close(fd);
  freeaddrinfo(ai);
  return ok;
}

/* The plugin is built next to the iotfin binary, and installed (make install, the
 * Debian package) in <prefix>/lib/iotfin/ beside <prefix>/bin/iotfin: both are tried,
 * in that order, so a build tree and an installed copy each find their own plugin.
 * IOTFIN_BROKER_PLUGIN overrides. On failure out holds the last path tried. */
static int find_plugin(char *out, size_t cap) {
  const char *env = getenv("IOTFIN_BROKER_PLUGIN");
  if (env) {
    snprintf(out, cap, "%s", env);
    return access(out, R_OK);
  }
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) return -1;
  self[n] = 0;
  char *slash = strrchr(self, '/');
  if (slash) *slash = 0;
  const char *rel[] = {"", "/../lib/iotfin"};
  for (size_t i = 0; i < sizeof(rel) / sizeof(rel[0]); i++) {
    snprintf(out, cap, "%s%s/mosquitto_iotfin_auth.so", self, rel[i]);
    if (access(out, R_OK) == 0) return 0;
  }
  return -1;
}

static int find_mosquitto(char *out, size_t cap) {
  const char *cands[] = {getenv("IOTFIN_MOSQUITTO"), "/usr/sbin/mosquitto",
                         "/usr/local/sbin/mosquitto", "/usr/bin/mosquitto"};
  for (size_t i = 0; i < sizeof(cands) / sizeof(cands[0]); i++) {
    if (cands[i] && access(cands[i], X_OK) == 0) {
      snprintf(out, cap, "%s", cands[i]);
      return 0;
    }
  }
  return -1;
}

/* Mosquitto started as root drops to the user named in its config; it must never
 * keep root. `mosquitto` (Debian's package creates it), else `nobody`. NULL when we
 * are not root: it then runs as our user. */
static const struct passwd *broker_user(void) {
  if (geteuid() != 0) return NULL;
  const struct passwd *pw = getpwnam("mosquitto");
  return pw ? pw : getpwnam("nobody");
}

/* A copy of a file in a memfd. The broker reopens what it inherits through
 * /proc/self/fd/N, which checks the file's own permissions: a key kept 0600, or a build
 * made under umask 077, would be refused to the broker's user. A memfd only it and we
 * hold has no such problem. Returns the fd (close-on-exec) or -1 with errno. */
static int memfd_of_file(const char *path, const char *name) {
  int in = open(path, O_RDONLY | O_CLOEXEC);
  if (in < 0) return -1;
  int out = (int)syscall(SYS_memfd_create, name, MFD_CLOEXEC);
  char buf[65536];
  ssize_t n = 0;
  while (out >= 0 && (n = read(in, buf, sizeof(buf))) > 0) {
    for (ssize_t off = 0; off < n;) {
      ssize_t w = write(out, buf + off, (size_t)(n - off));
      if (w <= 0) {
        n = -1;
        break;
      }
      off += w;
    }
    if (n < 0) break;
  }
  int err = errno;
  close(in);
  if (out >= 0 && n < 0) {
    close(out);
    out = -1;
  }
  errno = err;
  return out;
}

/* The start state for the plugin: the keys and every revocation, so a device is
 * judged correctly from the broker's first moment, before iotfin's client connects. */
static int make_state(hub_broker_t *b) {
  json_t *rev = NULL, *state = json_object();
  json_object_set_new(state, "keys", auth_keys_jwks(b->app->keys));
  if (devices_revoked_sessions(b->app, &rev) == 0) {
    json_object_set(state, "sessions", json_object_get(rev, "session_ids"));
    json_object_set(state, "devices", json_object_get(rev, "device_ids"));
  }
  json_decref(rev);
  char *s = json_dumps(state, JSON_COMPACT);
  json_decref(state);
  int fd = s ? (int)syscall(SYS_memfd_create, "iotfin-broker-state", MFD_CLOEXEC) : -1;
  size_t len = s ? strlen(s) : 0, off = 0;
  while (fd >= 0 && off < len) {
    ssize_t w = write(fd, s + off, len - off);
    if (w <= 0) {
      close(fd);
      fd = -1;
    } else {
      off += (size_t)w;
    }
  }
  free(s);
  if (b->state_fd >= 0) close(b->state_fd);
  b->state_fd = fd;
  return fd >= 0 ? 0 : -1;
}

static int write_config(hub_broker_t *b) {
  FILE *f = NULL;
  int fd = open(b->conf_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd >= 0) f = fdopen(fd, "w");
  if (!f) {
    if (fd >= 0) close(fd);
    log_error("broker", "cannot write %s: %s", b->conf_path, strerror(errno));
    return -ERR_UNAVAILABLE;
  }
  const struct passwd *user = broker_user();
  fprintf(f,
          "# Generated by iotfin at every start; edits are overwritten.\n"
          "per_listener_settings false\n"
          "allow_anonymous false\n"
          "persistence false\n"
          "log_dest stderr\n"
          "log_type error\nlog_type warning\nlog_type notice\n"
          "log_timestamp false\n"
          "max_packet_size 1048576\n"
          "set_tcp_nodelay true\n"
          /* Device messages wait for iotfin instead of being dropped when iotfin is
           * briefly slower than the devices: at QoS 1 the broker has already
           * acknowledged them, so a drop here would lose them for good. */
          "max_queued_messages 200000\n"
          "max_inflight_messages 0\n"
          "listener %d %s\n"
          "plugin /proc/self/fd/%d\n"
          "plugin_opt_internal_user %s\n"
          "plugin_opt_internal_password %s\n"
          "plugin_opt_parent_fd %d\n"
          "plugin_opt_spool_fd %d\n",
          b->port, b->cfg->mqtt_host, b->plugin_fd, HUB_INTERNAL_USER, b->password,
          b->parent_pipe[0], b->spool_fd);
  if (b->state_fd >= 0) fprintf(f, "plugin_opt_state_fd %d\n", b->state_fd);
  /* Read after the privilege drop, hence descriptors too. */
  if (b->cert_fd >= 0)
    fprintf(f, "certfile /proc/self/fd/%d\nkeyfile /proc/self/fd/%d\n", b->cert_fd, b->key_fd);
  if (user) fprintf(f, "user %s\n", user->pw_name);
  return fclose(f) == 0 ? 0 : -ERR_UNAVAILABLE;
}

typedef struct {
  hub_broker_t *b;
  int fd;
} relay_t;

static void *relay_logs(void *arg) {
  relay_t r = *(relay_t *)arg;
  free(arg);
  int fd = r.fd;
  FILE *f = fdopen(fd, "r");
  if (!f) {
    close(fd);
    return NULL;
  }
  char line[1024];
  while (fgets(line, sizeof(line), f)) {
    line[strcspn(line, "\r\n")] = 0;
    if (!line[0]) continue;
    bool err = strstr(line, "rror") != NULL;
    log_write(err ? LOG_ERROR : LOG_INFO, "broker", NULL, "%s", line);
    if (err) {
      /* The broker knows the plugin as /proc/self/fd/N; the reader wants its file. */
      char fdpath[32];
      snprintf(fdpath, sizeof(fdpath), "/proc/self/fd/%d", r.b->plugin_fd);
      char *at = strstr(line, fdpath);
      pthread_mutex_lock(&r.b->err_lock);
      if (at)
        snprintf(r.b->last_error, sizeof(r.b->last_error), "%.*s%s%s", (int)(at - line), line,
                 r.b->plugin_path, at + strlen(fdpath));
      else
        snprintf(r.b->last_error, sizeof(r.b->last_error), "%s", line);
      pthread_mutex_unlock(&r.b->err_lock);
    }
  }
  fclose(f);
  return NULL;
}

/* Forks and execs mosquitto. Returns the pid or -1. */
static int spawn(hub_broker_t *b) {
  int logp[2];
  if (pipe2(logp, O_CLOEXEC) < 0) return -1;
  char *argv[] = {b->exe, "-c", b->conf_path, NULL};
  /* Every device connection is a descriptor in the broker, and the usual soft limit
   * (1024, systemd's default too) would stop it near a thousand devices while the
   * hard limit allows far more: the broker gets the hard limit. */
  struct rlimit files;
  bool raise_files = getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max;
  files.rlim_cur = files.rlim_max;
  pid_t pid = fork();
  if (pid == 0) {
    /* Only async-signal-safe calls until exec. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    /* Its own process group: a Ctrl-C at the terminal reaches iotfin, which then
     * stops the broker in order, instead of killing the broker first. */
    setpgid(0, 0);
    if (getppid() == 1) _exit(127);
    if (raise_files) setrlimit(RLIMIT_NOFILE, &files);
    dup2(logp[1], STDOUT_FILENO);
    dup2(logp[1], STDERR_FILENO);
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, STDIN_FILENO);
    /* The plugin inherits these; the rest stay close-on-exec. */
    fcntl(b->parent_pipe[0], F_SETFD, 0);
    fcntl(b->plugin_fd, F_SETFD, 0);
    fcntl(b->spool_fd, F_SETFD, 0);
    if (b->cert_fd >= 0) {
      fcntl(b->cert_fd, F_SETFD, 0);
      fcntl(b->key_fd, F_SETFD, 0);
    }
    if (b->state_fd >= 0) fcntl(b->state_fd, F_SETFD, 0);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execv(b->exe, argv);
    _exit(127);
  }
  close(logp[1]);
  if (pid < 0) {
    close(logp[0]);
    return -1;
  }
  pthread_t t;
  relay_t *r = malloc(sizeof(*r));
  if (r) *r = (relay_t){b, logp[0]};
  if (r && pthread_create(&t, NULL, relay_logs, r) == 0) {
    pthread_detach(t);
  } else {
    free(r);
    close(logp[0]);
  }
  return pid;
}

/* Starts the process and waits for its port; returns 0, or -1 if it exited. */
static int launch(hub_broker_t *b, int wait_ms) {
  if (port_accepts(b->cfg->mqtt_host, b->port)) {
    /* Checked, not guessed: something already answers there, and mosquitto would
     * fail to bind while our probe below mistook that program for it. */
    pthread_mutex_lock(&b->err_lock);
    snprintf(b->last_error, sizeof(b->last_error),
             "another program already listens on %s:%d (IOTFIN_MQTT_LISTEN)", b->cfg->mqtt_host,
             b->port);
    pthread_mutex_unlock(&b->err_lock);
    return -1;
  }
  if (make_state(b) < 0)
    log_warn("broker", "no start state for the plugin; devices wait for iotfin");
  if (write_config(b) < 0) return -1;
  pthread_mutex_lock(&b->err_lock);
  b->last_error[0] = 0;
  pthread_mutex_unlock(&b->err_lock);
  int pid = spawn(b);
  if (pid < 0) return -1;
  atomic_store(&b->pid, pid);
  int64_t deadline = time_mono_ms() + wait_ms;
  while (time_mono_ms() < deadline) {
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      atomic_store(&b->pid, 0);
      return -1;
    }
    if (port_accepts(b->cfg->mqtt_host, b->port)) {
      b->launched_ms = time_mono_ms();
      return 0;
    }
    usleep(3000);
  }
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  atomic_store(&b->pid, 0);
  return -1;
}

/* Stores what the spool holds. all: every segment (no broker is appending); else
 * the closed ones only. A failure (storage down) leaves the segments for next time. */
static void apply_spool(hub_broker_t *b, bool all) {
  int n = hub_spool_apply(b->app, b->spool_path, all ? HUB_SPOOL_ALL : HUB_SPOOL_CLOSED);
  if (n > 0 && all)
    log_info("broker", "%d device message(s) from the broker's spool applied to the store", n);
}

/* The broker's reason for failing, if it said one. */
static void last_error(hub_broker_t *b, char *out, size_t cap) {
  /* The relay may still be reading the dying broker's last lines. */
  for (int i = 0; i < 40; i++) {
    pthread_mutex_lock(&b->err_lock);
    snprintf(out, cap, "%s", b->last_error);
    pthread_mutex_unlock(&b->err_lock);
    if (out[0]) return;
    usleep(5000);
  }
  snprintf(out, cap, "it exited without a reason (see its log lines above)");
}

static void *supervise(void *arg) {
  hub_broker_t *b = arg;
  pthread_setname_np(pthread_self(), "broker-watch");
  while (!atomic_load(&b->stopping)) {
    int pid = atomic_load(&b->pid);
    if (pid <= 0) {
      /* Whatever the dead broker acknowledged is stored before any device can
       * reconnect and send something newer. */
      apply_spool(b, true);
      /* A broker that keeps dying at once is not restarted in a tight loop. */
      if (time_mono_ms() - b->launched_ms < 2000)
        for (int i = 0; i < 10 && !atomic_load(&b->stopping); i++)
          usleep(100 * 1000);
      if (atomic_load(&b->stopping)) break;
      log_warn("broker", "restarting the managed broker on port %d", b->port);
      if (launch(b, 5000) < 0) {
        char why[512];
        last_error(b, why, sizeof(why));
        log_error("broker", "managed broker failed to restart: %s", why);
        for (int i = 0; i < 10 && !atomic_load(&b->stopping); i++)
          usleep(100 * 1000);
      }
      continue;
    }
    /* A pidfd wakes us the moment the broker dies; meanwhile, once a second, closed
     * spool segments are stored and deleted so the spool stays small. */
    int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
    struct pollfd p = {.fd = pfd, .events = POLLIN};
    int status = 0;
    pid_t r = 0;
    while (!atomic_load(&b->stopping)) {
      if (pfd >= 0)
        poll(&p, 1, 1000);
      else
        usleep(100 * 1000);
      r = waitpid(pid, &status, WNOHANG);
      if (r == pid || (r < 0 && errno != EINTR)) break;
      if (!atomic_load(&b->stopping)) apply_spool(b, false);
    }
    if (pfd >= 0) close(pfd);
    if (r != pid && atomic_load(&b->stopping)) break;
    atomic_store(&b->pid, 0);
    if (atomic_load(&b->stopping)) break;
    if (WIFSIGNALED(status))
      log_error("broker", "managed broker (pid %d) was killed by signal %d; devices are cut off",
                pid, WTERMSIG(status));
    else
      log_error("broker", "managed broker (pid %d) exited with status %d; devices are cut off", pid,
                WEXITSTATUS(status));
  }
  return NULL;
}

/* Opens what the broker inherits. The spool directory belongs to the broker's user,
 * which must create files in it; iotfin, root or the same user, reads it. */
static int prepare_files(hub_broker_t *b) {
  b->plugin_fd = memfd_of_file(b->plugin_path, "mosquitto_iotfin_auth.so");
  if (b->plugin_fd < 0) {
    log_error("broker", "cannot open the broker plugin %s: %s", b->plugin_path, strerror(errno));
    return -1;
  }
  if (mkdir(b->spool_path, 0700) < 0 && errno != EEXIST) {
    log_error("broker", "cannot create %s: %s", b->spool_path, strerror(errno));
    return -1;
  }
  const struct passwd *user = broker_user();
  if (user && chown(b->spool_path, user->pw_uid, user->pw_gid) < 0) {
    log_error("broker", "cannot give %s to the broker's user %s: %s", b->spool_path, user->pw_name,
              strerror(errno));
    return -1;
  }
  b->spool_fd = open(b->spool_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (b->spool_fd < 0) {
    log_error("broker", "cannot open %s: %s", b->spool_path, strerror(errno));
    return -1;
  }
  if (b->cfg->mqtt_tls_cert[0]) {
    b->cert_fd = memfd_of_file(b->cfg->mqtt_tls_cert, "mqtt-tls-cert");
    b->key_fd = memfd_of_file(b->cfg->mqtt_tls_key, "mqtt-tls-key");
    if (b->cert_fd < 0 || b->key_fd < 0) {
      log_error("broker", "cannot open the MQTT TLS certificate or key: %s", strerror(errno));
      return -1;
    }
  }
  return 0;
}

static void close_files(hub_broker_t *b) {
  if (b->plugin_fd >= 0) close(b->plugin_fd);
  if (b->spool_fd >= 0) close(b->spool_fd);
  if (b->state_fd >= 0) close(b->state_fd);
  if (b->cert_fd >= 0) close(b->cert_fd);
  if (b->key_fd >= 0) close(b->key_fd);
}

int hub_broker_start(app_t *app, const char *internal_password, hub_broker_t **out) {
  *out = NULL;
  hub_broker_t *b = calloc(1, sizeof(*b));
  if (!b) return -ERR_INTERNAL;
  b->app = app;
  b->cfg = app->cfg;
  b->plugin_fd = b->spool_fd = b->state_fd = b->cert_fd = b->key_fd = -1;
  b->parent_pipe[0] = b->parent_pipe[1] = -1;
  pthread_mutex_init(&b->err_lock, NULL);
  const config_t *cfg = b->cfg;
  snprintf(b->password, sizeof(b->password), "%s", internal_password);
  snprintf(b->dir, sizeof(b->dir), "%s/broker", cfg->data_dir);
  snprintf(b->conf_path, sizeof(b->conf_path), "%s/mosquitto.conf", b->dir);
  snprintf(b->spool_path, sizeof(b->spool_path), "%s/spool", b->dir);
  int rc = -ERR_UNAVAILABLE;
  if (mkdir(b->dir, 0700) < 0 && errno != EEXIST) {
    log_error("broker", "cannot create %s: %s", b->dir, strerror(errno));
    goto fail;
  }
  if (find_mosquitto(b->exe, sizeof(b->exe)) < 0) {
    log_error("broker", "mosquitto not found (apt-get install mosquitto, or set IOTFIN_MOSQUITTO)");
    goto fail;
  }
  if (find_plugin(b->plugin_path, sizeof(b->plugin_path)) < 0) {
    log_error("broker", "auth plugin %s not found (set IOTFIN_BROKER_PLUGIN)", b->plugin_path);
    goto fail;
  }
  if (prepare_files(b) < 0) goto fail;
  /* What an earlier broker acknowledged and nobody stored (iotfin was killed) goes
   * in first, before any device can connect and send something newer. */
  if (hub_spool_apply(app, b->spool_path, HUB_SPOOL_ALL) < 0) {
    log_error("broker", "cannot store the device messages left in %s", b->spool_path);
    goto fail;
  }
  if (pipe2(b->parent_pipe, O_CLOEXEC) < 0) goto fail;
  /* A picked port can be taken between our probe and mosquitto's bind: try again. */
  for (int attempt = 0; attempt < 5; attempt++) {
    b->port = cfg->mqtt_port ? cfg->mqtt_port : free_port(cfg->mqtt_host);
    if (b->port <= 0) break;
    if (launch(b, 5000) == 0) {
      rc = 0;
      break;
    }
    if (cfg->mqtt_port) break;
  }
  if (rc < 0) {
    char why[512];
    last_error(b, why, sizeof(why));
    log_error("broker", "cannot start mosquitto on %s:%d: %s", cfg->mqtt_host, b->port, why);
    goto fail;
  }
  if (pthread_create(&b->supervisor, NULL, supervise, b) != 0) {
    rc = -ERR_INTERNAL;
    kill(atomic_load(&b->pid), SIGKILL);
    waitpid(atomic_load(&b->pid), NULL, 0);
    goto fail;
  }
  log_info("broker", "managed broker running on %s:%d (pid %d)", cfg->mqtt_host, b->port,
           atomic_load(&b->pid));
  *out = b;
  return 0;

fail:
  if (b->parent_pipe[0] >= 0) close(b->parent_pipe[0]);
  if (b->parent_pipe[1] >= 0) close(b->parent_pipe[1]);
  close_files(b);
  pthread_mutex_destroy(&b->err_lock);
  free(b);
  return rc;
}

int hub_broker_port(const hub_broker_t *b) { return b->port; }

bool hub_broker_alive(const hub_broker_t *b) { return b && atomic_load(&b->pid) > 0; }

void hub_broker_stop(hub_broker_t **pb) {
  hub_broker_t *b = *pb;
  if (!b) return;
  atomic_store(&b->stopping, true);
  int pid = atomic_load(&b->pid);
  if (pid > 0) {
    kill(pid, SIGTERM);
    /* Mosquitto keeps its signals blocked while it waits for traffic and looks at
     * them between waits, which end every 100 ms: a connection ends this one now, so
     * a stop (every test server's, every restart's) does not pay up to 100 ms. */
    port_accepts(b->cfg->mqtt_host, b->port);
    int64_t deadline = time_mono_ms() + 3000;
    while (waitpid(pid, NULL, WNOHANG) == 0 && time_mono_ms() < deadline)
      usleep(5000);
    if (waitpid(pid, NULL, WNOHANG) == 0) {
      kill(pid, SIGKILL);
      waitpid(pid, NULL, 0);
    }
    atomic_store(&b->pid, 0);
  }
  pthread_join(b->supervisor, NULL);
  /* The stopped broker's last segment: stored now rather than at the next start. */
  apply_spool(b, true);
  close(b->parent_pipe[0]);
  close(b->parent_pipe[1]);
  close_files(b);
  pthread_mutex_destroy(&b->err_lock);
  free(b);
  *pb = NULL;
}
