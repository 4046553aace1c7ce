/* Session routes (CONTRACT section 3). */
#include "api/api.h"
#include "app.h"
#include "services/sessions.h"

int api_sessions_anonymous(http_req_t *req) {
  json_t *out;
  int rc = sessions_create_anonymous(http_req_app(req), &out);
  if (rc < 0) return rc;
  return http_reply_json(req, 201, out);
}
