/* Shared helpers of the C test programs. */
#ifndef NET_TEST_COMMON_H
#define NET_TEST_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net.h"

#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            exit(1);                                                             \
        }                                                                        \
    } while (0)

#define EXPECT(call, code)                                                       \
    do {                                                                         \
        net_result r_ = (call);                                                  \
        if (r_ != (code)) {                                                      \
            char m_[512];                                                        \
            size_t n_ = 0;                                                       \
            m_[0] = 0;                                                           \
            net_last_error(m_, sizeof m_, &n_);                                  \
            fprintf(stderr, "%s:%d: %s returned %s, expected %s (last error: %s)\n", \
                    __FILE__, __LINE__, #call, net_result_str(r_), #code, m_);    \
            exit(1);                                                             \
        }                                                                        \
    } while (0)

/* The last error message of this thread (static buffer). */
static inline const char *last_error(void) {
    static char buf[1024];
    size_t needed = 0;
    buf[0] = 0;
    net_last_error(buf, sizeof buf, &needed);
    return buf;
}

/* A bus on a fresh directory under $TMPDIR; `dir` receives its path. */
static inline net_bus *start_bus(char *dir, size_t dir_cap, int shards) {
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, dir_cap, "%s/net-ffi-test-XXXXXX", tmp ? tmp : "/tmp");
    CHECK(mkdtemp(dir) != NULL);
    char json[1024];
    int n = snprintf(json, sizeof json, "{\"data_dir\": \"%s\", \"shards\": %d}", dir, shards);
    CHECK(n > 0 && (size_t)n < sizeof json);
    net_bus *bus = NULL;
    EXPECT(net_bus_new(json, (size_t)n, &bus), NET_OK);
    CHECK(bus != NULL);
    return bus;
}

static inline void remove_dir(const char *dir) {
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0);
}

static inline size_t env_count(const char *name, size_t fallback) {
    const char *v = getenv(name);
    return v && *v ? (size_t)strtoull(v, NULL, 10) : fallback;
}

#endif
