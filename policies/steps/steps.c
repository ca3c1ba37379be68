// `steps`: a table of backlog thresholds to replica counts, from the `steps` setting.
//
//   steps: "0:1,100:3,1000:10"   →  backlog 0–99: 1 worker, 100–999: 3, 1000 and up: 10
//
// The row with the highest threshold not above the backlog wins; a backlog below the first
// threshold asks for 0 (the host raises that to the app's minimum), or, with
// `declineBelowFirst: "true"`, declines so that the next policy decides. Built as a component with
// `wit-bindgen c` bindings (../build.sh). Only memory allocation comes from wasi-libc, so the
// component imports nothing from WASI; formatting is done by hand to keep stdio out.

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "scaling_policy.h"

#define MAX_STEPS 64

typedef struct {
  uint64_t threshold;
  uint32_t replicas;
} step_t;

typedef struct {
  step_t rows[MAX_STEPS];
  size_t len;
  // `declineBelowFirst: "true"`: below the first threshold, decline (see wit/policy.wit).
  int decline_below_first;
} table_t;

// A growable message, owned by the caller until handed to the bindings.
typedef struct {
  char buf[512];
  size_t len;
} msg_t;

static void put(msg_t *m, const char *s) {
  size_t n = strlen(s);
  if (n > sizeof m->buf - 1 - m->len) n = sizeof m->buf - 1 - m->len;
  memcpy(m->buf + m->len, s, n);
  m->len += n;
  m->buf[m->len] = 0;
}

static void put_n(msg_t *m, const uint8_t *s, size_t n) {
  if (n > sizeof m->buf - 1 - m->len) n = sizeof m->buf - 1 - m->len;
  memcpy(m->buf + m->len, s, n);
  m->len += n;
  m->buf[m->len] = 0;
}

static void put_u64(msg_t *m, uint64_t v) {
  char digits[21];
  size_t i = sizeof digits - 1;
  digits[i] = 0;
  do {
    digits[--i] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  put(m, digits + i);
}

static void set_string(scaling_policy_string_t *out, const msg_t *m) {
  scaling_policy_string_dup_n(out, m->buf, m->len);
}

static int key_is(const scaling_policy_string_t *s, const char *key) {
  size_t n = strlen(key);
  return s->len == n && memcmp(s->ptr, key, n) == 0;
}

static int is_space(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// Parses a decimal number from s[*i..end), skipping blanks around it. Returns 0 on failure.
static int parse_u64(const uint8_t *s, size_t *i, size_t end, uint64_t max, uint64_t *out) {
  while (*i < end && is_space(s[*i])) (*i)++;
  if (*i >= end || s[*i] < '0' || s[*i] > '9') return 0;
  uint64_t v = 0;
  while (*i < end && s[*i] >= '0' && s[*i] <= '9') {
    uint64_t d = (uint64_t)(s[*i] - '0');
    if (v > (max - d) / 10) return 0;
    v = v * 10 + d;
    (*i)++;
  }
  while (*i < end && is_space(s[*i])) (*i)++;
  *out = v;
  return 1;
}

static void fail_entry(msg_t *m, size_t index, const uint8_t *s, size_t from, size_t to, const char *why) {
  put(m, "setting steps: entry ");
  put_u64(m, index + 1);
  put(m, " \"");
  put_n(m, s + from, to - from);
  put(m, "\": ");
  put(m, why);
}

// Parses "THRESHOLD:REPLICAS,…". On failure writes the reason to err and returns 0.
static int parse_table(const scaling_policy_list_tuple2_string_string_t *settings, table_t *t, msg_t *err) {
  const scaling_policy_string_t *raw = NULL;
  t->decline_below_first = 0;
  for (size_t k = 0; k < settings->len; k++) {
    const scaling_policy_string_t *key = &settings->ptr[k].f0;
    const scaling_policy_string_t *value = &settings->ptr[k].f1;
    if (key_is(key, "steps")) {
      raw = value;
    } else if (key_is(key, "declineBelowFirst")) {
      if (key_is(value, "true")) {
        t->decline_below_first = 1;
      } else if (!key_is(value, "false")) {
        put(err, "setting declineBelowFirst: \"");
        put_n(err, value->ptr, value->len);
        put(err, "\" is neither \"true\" nor \"false\"");
        return 0;
      }
    } else {
      put(err, "setting ");
      put_n(err, key->ptr, key->len);
      put(err, ": unknown (known: steps, declineBelowFirst)");
      return 0;
    }
  }
  if (raw == NULL) {
    put(err, "setting steps: required, e.g. \"0:1,100:3,1000:10\" (backlog threshold:replicas, ascending)");
    return 0;
  }
  const uint8_t *s = raw->ptr;
  size_t i = 0, end = raw->len;
  t->len = 0;
  while (i < end || t->len == 0) {
    size_t from = i;
    size_t to = i;
    while (to < end && s[to] != ',') to++;
    if (t->len == MAX_STEPS) {
      put(err, "setting steps: more than 64 entries");
      return 0;
    }
    uint64_t threshold, replicas;
    if (!parse_u64(s, &i, to, UINT64_MAX, &threshold) || i >= to || s[i] != ':') {
      fail_entry(err, t->len, s, from, to, "expected THRESHOLD:REPLICAS with a whole-number threshold");
      return 0;
    }
    i++;
    if (!parse_u64(s, &i, to, UINT32_MAX, &replicas) || i != to) {
      fail_entry(err, t->len, s, from, to, "replicas must be a whole number up to 4294967295");
      return 0;
    }
    if (t->len > 0 && threshold <= t->rows[t->len - 1].threshold) {
      fail_entry(err, t->len, s, from, to, "thresholds must be strictly ascending");
      return 0;
    }
    t->rows[t->len].threshold = threshold;
    t->rows[t->len].replicas = (uint32_t)replicas;
    t->len++;
    i = to;
    if (i < end) {
      i++;  // the comma
      if (i == end) {
        fail_entry(err, t->len, s, i, i, "empty entry after the last comma");
        return 0;
      }
    } else {
      break;
    }
  }
  return 1;
}

bool exports_celery_autoscaler_policy_validate_settings(scaling_policy_list_tuple2_string_string_t *settings,
                                                          scaling_policy_string_t *err) {
  table_t table;
  msg_t m = {.len = 0};
  bool ok = parse_table(settings, &table, &m);
  if (!ok) set_string(err, &m);
  scaling_policy_list_tuple2_string_string_free(settings);
  return ok;
}

bool exports_celery_autoscaler_policy_decide(exports_celery_autoscaler_policy_input_t *input,
                                              exports_celery_autoscaler_policy_decision_t *ret,
                                              scaling_policy_string_t *err) {
  table_t table;
  msg_t m = {.len = 0};
  if (!parse_table(&input->settings, &table, &m)) {
    set_string(err, &m);
    exports_celery_autoscaler_policy_input_free(input);
    return false;
  }
  uint64_t backlog = 0;
  for (size_t q = 0; q < input->current.queues.len; q++) {
    uint64_t b = input->current.queues.ptr[q].backlog;
    backlog = backlog > UINT64_MAX - b ? UINT64_MAX : backlog + b;
  }
  const step_t *row = NULL;
  for (size_t r = 0; r < table.len && table.rows[r].threshold <= backlog; r++) row = &table.rows[r];

  if (!row && table.decline_below_first) {
    // Declining: the current count, so that a host without the convention holds it.
    ret->replicas = input->current_replicas;
    put(&m, "decline: ");
    put_u64(&m, backlog);
    put(&m, backlog == 1 ? " message" : " messages");
    put(&m, ", below the first step (");
    put_u64(&m, table.rows[0].threshold);
    put(&m, ")");
    set_string(&ret->reason, &m);
    exports_celery_autoscaler_policy_input_free(input);
    return true;
  }
  ret->replicas = row ? row->replicas : 0;
  put_u64(&m, backlog);
  put(&m, backlog == 1 ? " message" : " messages");
  if (row) {
    put(&m, ", step ≥ ");
    put_u64(&m, row->threshold);
  } else {
    put(&m, ", below the first step (");
    put_u64(&m, table.rows[0].threshold);
    put(&m, ")");
  }
  put(&m, " → ");
  put_u64(&m, ret->replicas);
  put(&m, ret->replicas == 1 ? " worker" : " workers");
  set_string(&ret->reason, &m);
  exports_celery_autoscaler_policy_input_free(input);
  return true;
}
