/* The happy path: NET_C_EVENTS events (default 1,000,000) ingested from 2 pthreads, flushed,
 * polled back through net_poll and checked byte for byte, each exactly once. */
#include <pthread.h>
#include <stdint.h>

#include "common.h"

#define THREADS 2

static net_bus *bus;
static size_t per_thread;

/* Event i of thread t: 8 bytes (t, i), then (i % 41) bytes of (i * 7 + t) & 0xff. */
static size_t make_payload(uint32_t t, uint32_t i, uint8_t *out) {
    memcpy(out, &t, 4);
    memcpy(out + 4, &i, 4);
    size_t extra = i % 41;
    memset(out + 8, (int)((i * 7u + t) & 0xffu), extra);
    return 8 + extra;
}

static void *producer(void *arg) {
    uint32_t t = (uint32_t)(uintptr_t)arg;
    uint8_t payload[64];
    for (uint32_t i = 0; i < per_thread; i++) {
        size_t len = make_payload(t, i, payload);
        uint32_t key = t; /* one key per thread: its events keep their order */
        net_result r;
        while ((r = net_ingest(bus, (const uint8_t *)&key, sizeof key, payload, len)) == NET_ERR_FULL) {
        }
        if (r != NET_OK) {
            fprintf(stderr, "ingest: %s: %s\n", net_result_str(r), last_error());
            exit(1);
        }
    }
    return NULL;
}

int main(void) {
    size_t total = env_count("NET_C_EVENTS", 1000000);
    per_thread = total / THREADS;
    total = per_thread * THREADS;
    char dir[512];
    bus = start_bus(dir, sizeof dir, 2);

    pthread_t th[THREADS];
    for (uintptr_t t = 0; t < THREADS; t++) {
        CHECK(pthread_create(&th[t], NULL, producer, (void *)t) == 0);
    }
    for (int t = 0; t < THREADS; t++) {
        CHECK(pthread_join(th[t], NULL) == 0);
    }
    EXPECT(net_flush(bus, UINT64_MAX), NET_OK);

    /* Read everything back; per thread, events arrive in order (one key each). */
    uint32_t next_i[THREADS] = {0};
    size_t buf_len = 1 << 20;
    uint8_t *buf = aligned_alloc(8, buf_len);
    CHECK(buf != NULL);
    char cursor[4096] = "";
    size_t cursor_len = 0;
    size_t seen = 0;
    uint8_t expect[64];
    while (seen < total) {
        net_poll_info info;
        char next[4096];
        EXPECT(net_poll(bus, cursor, cursor_len, 4096, buf, buf_len, next, sizeof next, &info), NET_OK);
        CHECK(info.failed_shards == 0);
        CHECK(info.events > 0);
        size_t at = 0;
        for (size_t e = 0; e < info.events; e++) {
            net_event_header h;
            memcpy(&h, buf + at, sizeof h);
            const uint8_t *p = buf + at + NET_EVENT_HEADER_BYTES;
            CHECK(h.payload_len >= 8);
            uint32_t t, i;
            memcpy(&t, p, 4);
            memcpy(&i, p + 4, 4);
            CHECK(t < THREADS);
            CHECK(i == next_i[t]);
            size_t len = make_payload(t, i, expect);
            CHECK(h.payload_len == len);
            CHECK(memcmp(p, expect, len) == 0);
            next_i[t]++;
            at += NET_EVENT_HEADER_BYTES + ((h.payload_len + 7u) & ~(size_t)7u);
        }
        CHECK(at == info.bytes_used);
        seen += info.events;
        memcpy(cursor, next, info.cursor_len + 1);
        cursor_len = info.cursor_len;
    }
    for (int t = 0; t < THREADS; t++) {
        CHECK(next_i[t] == per_thread);
    }
    /* Nothing more. */
    net_poll_info info;
    char next[4096];
    EXPECT(net_poll(bus, cursor, cursor_len, 16, buf, buf_len, next, sizeof next, &info), NET_OK);
    CHECK(info.events == 0);

    net_stats st;
    EXPECT(net_bus_stats(bus, &st), NET_OK);
    CHECK(st.ingested == total && st.persisted == total && st.dropped == 0);

    net_shutdown_report rep;
    EXPECT(net_bus_shutdown(bus, 10000, &rep), NET_OK);
    CHECK(!rep.lossy && rep.ingested == total && rep.persisted == total);
    EXPECT(net_bus_free(bus), NET_OK);
    free(buf);
    remove_dir(dir);
    printf("happy: %zu events from %d threads polled back byte-exact\n", total, THREADS);
    return 0;
}
