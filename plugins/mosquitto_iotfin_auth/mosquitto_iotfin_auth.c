/* mosquitto_iotfin_auth: the Mosquitto 2.0 plugin that lets iotfin own its broker.
 * It admits iotfin's own client (a per-start secret), refuses every other client
 * unless a later check admits it, gives iotfin full access and nobody else any,
 * and ends the broker when iotfin dies, even by kill -9, so that no orphan broker
 * keeps acknowledging device messages that nobody stores.
 *
 * Build: see CMakeLists.txt (target mosquitto_iotfin_auth, a shared module).
 * Config lines (iotfin writes them into the generated mosquitto.conf):
 *   plugin /path/to/mosquitto_iotfin_auth.so
 *   plugin_opt_internal_user iotfin
 *   plugin_opt_internal_password <secret>
 *   plugin_opt_parent_fd <fd>     (read end of a pipe whose write end iotfin holds)
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

typedef struct {
  mosquitto_plugin_id_t *id;
  char *internal_user;
  char *internal_password;
  int parent_fd;
  pthread_t watcher;
  bool watching;
} plugin_state_t;

static plugin_state_t state;

/* Constant-time string equality: the secret must not leak through timing. */
static bool secret_equal(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  unsigned char diff = (unsigned char)(la != lb);
  for (size_t i = 0; i < la; i++) diff |= (unsigned char)(a[i] ^ b[i % (lb ? lb : 1)]);
  return diff == 0;
}

static bool is_internal(const char *username) {
  return username && state.internal_user && strcmp(username, state.internal_user) == 0;
}

static int on_basic_auth(int event, void *event_data, void *userdata) {
  struct mosquitto_evt_basic_auth *ed = event_data;
  if (is_internal(ed->username) && ed->password && state.internal_password &&
      secret_equal(ed->password, state.internal_password))
    return MOSQ_ERR_SUCCESS;
  return MOSQ_ERR_AUTH;
}

static int on_acl_check(int event, void *event_data, void *userdata) {
  struct mosquitto_evt_acl_check *ed = event_data;
  if (is_internal(mosquitto_client_username(ed->client))) return MOSQ_ERR_SUCCESS;
  return MOSQ_ERR_ACL_DENIED;
}

/* Blocks until the write end of the pipe closes, which happens when iotfin exits
 * for any reason; then asks the broker to stop as if it got SIGTERM. */
static void *watch_parent(void *arg) {
  struct pollfd p = {.fd = state.parent_fd, .events = POLLIN};
  for (;;) {
    int n = poll(&p, 1, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 || (p.revents & (POLLHUP | POLLERR | POLLIN))) break;
  }
  mosquitto_log_printf(MOSQ_LOG_WARNING, "iotfin_auth: iotfin is gone; stopping the broker");
  kill(getpid(), SIGTERM);
  return NULL;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions) {
  return 5;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
                          struct mosquitto_opt *opts, int opt_count) {
  memset(&state, 0, sizeof(state));
  state.id = identifier;
  state.parent_fd = -1;
  for (int i = 0; i < opt_count; i++) {
    if (strcmp(opts[i].key, "internal_user") == 0)
      state.internal_user = strdup(opts[i].value);
    else if (strcmp(opts[i].key, "internal_password") == 0)
      state.internal_password = strdup(opts[i].value);
    else if (strcmp(opts[i].key, "parent_fd") == 0)
      state.parent_fd = atoi(opts[i].value);
  }
  if (!state.internal_user || !state.internal_password) {
    mosquitto_log_printf(MOSQ_LOG_ERR, "iotfin_auth: internal_user and internal_password needed");
    return MOSQ_ERR_INVAL;
  }
  if (state.parent_fd >= 0) {
    if (pthread_create(&state.watcher, NULL, watch_parent, NULL) != 0) return MOSQ_ERR_UNKNOWN;
    pthread_detach(state.watcher);
    state.watching = true;
  }
  int rc = mosquitto_callback_register(identifier, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL);
  if (rc == MOSQ_ERR_SUCCESS)
    rc = mosquitto_callback_register(identifier, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL);
  return rc;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *opts, int opt_count) {
  mosquitto_callback_unregister(state.id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
  mosquitto_callback_unregister(state.id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
  free(state.internal_user);
  free(state.internal_password);
  state.internal_user = state.internal_password = NULL;
  return MOSQ_ERR_SUCCESS;
}
