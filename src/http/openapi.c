/* OpenAPI 3.1 from the route table: paths, methods, path parameters, security by
 * tier, request schemas from the declarative body specs, and the error registry
 * as the Problem schema's code enum. */
#include "http/openapi.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "core/errors.h"

static json_t *field_schema(const http_field_t *f);

static json_t *object_schema(const http_field_t *fields, bool open) {
  json_t *props = json_object(), *req = json_array();
  for (const http_field_t *f = fields; f && f->name; f++) {
    json_object_set_new(props, f->name, field_schema(f));
    if (f->required) json_array_append_new(req, json_string(f->name));
  }
  json_t *s = json_pack("{s:s,s:o,s:b}", "type", "object", "properties", props,
                        "additionalProperties", open);
  if (json_array_size(req))
    json_object_set_new(s, "required", req);
  else
    json_decref(req);
  return s;
}

static json_t *field_schema(const http_field_t *f) {
  static const char *names[] = {"string", "integer", "boolean", "object", "array"};
  json_t *s = json_pack("{s:s}", "type", names[f->type]);
  bool ranged = f->min || f->max;
  switch (f->type) {
  case HTTP_T_STRING:
    if (ranged) {
      json_object_set_new(s, "minLength", json_integer(f->min));
      json_object_set_new(s, "maxLength", json_integer(f->max));
    }
    if (f->pattern) json_object_set_new(s, "pattern", json_string(f->pattern));
    if (f->enum_values) {
      json_t *e = json_array();
      char buf[256];
      snprintf(buf, sizeof(buf), "%s", f->enum_values);
      for (char *save, *t = strtok_r(buf, "|", &save); t; t = strtok_r(NULL, "|", &save))
        json_array_append_new(e, json_string(t));
      json_object_set_new(s, "enum", e);
    }
    break;
  case HTTP_T_INT:
    if (ranged) {
      json_object_set_new(s, "minimum", json_integer(f->min));
      json_object_set_new(s, "maximum", json_integer(f->max));
    }
    break;
  case HTTP_T_ARRAY:
    if (ranged) {
      json_object_set_new(s, "minItems", json_integer(f->min));
      json_object_set_new(s, "maxItems", json_integer(f->max));
    }
    if (f->items) json_object_set_new(s, "items", object_schema(f->items, false));
    break;
  case HTTP_T_OBJECT:
    if (f->max)
      json_object_set_new(s, "description",
                          json_sprintf("At most %ld bytes when serialised.", f->max));
    break;
  default:
    break;
  }
  if (f->description && !json_object_get(s, "description"))
    json_object_set_new(s, "description", json_string(f->description));
  return s;
}

static json_t *problem_schema(void) {
  json_t *codes = json_array();
#define OPENAPI_CODE(name, st, cd, tt) json_array_append_new(codes, json_string(cd));
  ERRORS_TABLE(OPENAPI_CODE)
#undef OPENAPI_CODE
  return json_pack(
      "{s:s,s:[s,s,s,s,s],s:{s:{s:s},s:{s:s},s:{s:s},s:{s:s},s:{s:s,s:o},s:{s:s,s:{s:s,s:{s:{s:s},"
      "s:{s:s}}}}}}",
      "type", "object", "required", "type", "title", "status", "detail", "code", "properties",
      "type", "type", "string", "title", "type", "string", "status", "type", "integer", "detail",
      "type", "string", "code", "type", "string", "enum", codes, "errors", "type", "array", "items",
      "type", "object", "properties", "field", "type", "string", "message", "type", "string");
}

json_t *http_openapi_paths(const http_route_t *routes, int n) {
  json_t *paths = json_object();
  for (int i = 0; i < n; i++) {
    const http_route_t *rt = &routes[i];
    if (strcmp(rt->method, "*") == 0) {
      /* A catch-all is documented once per method it serves. */
      static const char *methods[] = {"GET", "POST", "PUT", "PATCH", "DELETE"};
      for (int m = 0; m < 5; m++) {
        http_route_t one = *rt;
        one.method = methods[m];
        json_t *sub = http_openapi_paths(&one, 1);
        const char *p;
        json_t *item;
        json_object_foreach(sub, p, item) {
          json_t *have = json_object_get(paths, p);
          if (have)
            json_object_update(have, item);
          else
            json_object_set(paths, p, item);
        }
        json_decref(sub);
      }
      continue;
    }
    json_t *item = json_object_get(paths, rt->path);
    if (!item) {
      item = json_object();
      json_object_set_new(paths, rt->path, item);
    }
    char method[16], opid[160];
    size_t k;
    for (k = 0; k < sizeof(method) - 1 && rt->method[k]; k++)
      method[k] = (char)tolower((unsigned char)rt->method[k]);
    method[k] = 0;
    snprintf(opid, sizeof(opid), "%s", method);
    size_t ol = strlen(opid);
    for (const char *p = rt->path; *p && ol < sizeof(opid) - 1; p++)
      opid[ol++] = isalnum((unsigned char)*p) ? *p : '_';
    opid[ol] = 0;

    json_t *op =
        json_pack("{s:s,s:s,s:[s]}", "operationId", opid, "summary", rt->summary, "tags", rt->tag);
    json_t *params = json_array();
    for (const char *p = strchr(rt->path, '{'); p; p = strchr(p + 1, '{')) {
      const char *e = strchr(p, '}');
      if (!e) break;
      json_array_append_new(params,
                            json_pack("{s:s%,s:s,s:b,s:{s:s}}", "name", p + 1, (size_t)(e - p - 1),
                                      "in", "path", "required", 1, "schema", "type", "string"));
    }
    if (rt->idempotent_key)
      json_array_append_new(params,
                            json_pack("{s:s,s:s,s:b,s:{s:s},s:s}", "name", "Idempotency-Key", "in",
                                      "header", "required", 0, "schema", "type", "string",
                                      "description", "Replays the first answer for 24 h."));
    if (json_array_size(params))
      json_object_set_new(op, "parameters", params);
    else
      json_decref(params);
    if (rt->auth) {
      json_t *sec = json_array();
      json_array_append_new(
          sec, json_pack("{s:[]}", (rt->auth & HTTP_AUTH_ADMIN) && rt->auth == HTTP_AUTH_ADMIN
                                       ? "adminToken"
                                       : "bearer"));
      json_object_set_new(op, "security", sec);
      json_t *tiers = json_array();
      const char *names[] = {"anonymous", "registration", "user", "device", "admin"};
      for (int b = 0; b < 5; b++)
        if (rt->auth & (1u << b)) json_array_append_new(tiers, json_string(names[b]));
      json_object_set_new(op, "x-iotfin-tiers", tiers);
    }
    if (rt->console_session)
      json_object_set_new(op, "security", json_pack("[{s:[]}]", "consoleSession"));
    if (rt->body) {
      json_t *content = json_pack("{s:{s:o}}", "application/json", "schema",
                                  object_schema(rt->body->fields, rt->body->open));
      if (rt->body->allow_csv)
        json_object_set_new(content, "text/csv",
                            json_pack("{s:{s:s}}", "schema", "type", "string"));
      json_object_set_new(op, "requestBody",
                          json_pack("{s:b,s:o}", "required", 1, "content", content));
    }
    char st[8];
    snprintf(st, sizeof(st), "%d", rt->success_status);
    json_object_set_new(op, "responses",
                        json_pack("{s:{s:s},s:{s:s,s:{s:{s:{s:s}}}}}", st, "description", "Success",
                                  "default", "description", "Error (RFC 9457 problem)", "content",
                                  "application/problem+json", "schema", "$ref",
                                  "#/components/schemas/Problem"));
    json_object_set_new(item, method, op);
  }
  return paths;
}

json_t *http_openapi(const http_route_t *routes, int n) {
  json_t *paths = http_openapi_paths(routes, n);
  json_t *doc = json_pack(
      "{s:s,s:{s:s,s:s,s:s},s:o,s:{s:{s:o},s:{s:{s:s,s:s,s:s},s:{s:s,s:s,s:s}}}}", "openapi",
      "3.1.0", "info", "title", "iotfin", "version", IOTFIN_VERSION, "description",
      "Event-driven backend for financial IoT devices. Generated from the route table.", "paths",
      paths, "components", "schemas", "Problem", problem_schema(), "securitySchemes", "bearer",
      "type", "http", "scheme", "bearer", "bearerFormat", "JWT", "adminToken", "type", "http",
      "scheme", "bearer", "description", "The admin token of the instance.");
  json_t *schemes = json_object_get(json_object_get(doc, "components"), "securitySchemes");
  json_object_set_new(
      schemes, "consoleSession",
      json_pack("{s:s,s:s,s:s,s:s}", "type", "apiKey", "in", "cookie", "name", "iotfin_console",
                "description",
                "The operator console's session, set by POST /console/api/session with the "
                "admin token. Calls other than GET must also send Origin equal to the server's "
                "own origin and the session's X-CSRF-Token header, else 403."));
  return doc;
}
