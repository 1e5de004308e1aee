/* Every error path of the C API: NULL pointers, a misaligned and a foreign handle,
 * len = (size_t)-1, invalid UTF-8 and config, a tiny poll buffer then a retry that gets every
 * event, batch refusals, the allocated poll result freed twice, concurrent shutdowns, use
 * after shutdown, and a double free. Run under valgrind by the test driver. */
#include <pthread.h>
#include <stdint.h>

#include "common.h"

static net_bus *bus;

static void *shutdown_thread(void *out) {
    EXPECT(net_bus_shutdown(bus, 5000, (net_shutdown_report *)out), NET_OK);
    return NULL;
}

int main(void) {
    /* Codes and their names. */
    CHECK(strcmp(net_result_str(NET_OK), "NET_OK") == 0);
    CHECK(strcmp(net_result_str(NET_ERR_BUFFER_TOO_SMALL), "NET_ERR_BUFFER_TOO_SMALL") == 0);
    CHECK(strcmp(net_result_str(9999), "NET_ERR_UNKNOWN") == 0);
    CHECK(strlen(net_version()) > 0);

    /* net_bus_new: NULL arguments, invalid UTF-8, invalid config naming the field. */
    net_bus *b = (net_bus *)1;
    EXPECT(net_bus_new("{}", 2, NULL), NET_ERR_NULL);
    EXPECT(net_bus_new(NULL, 10, &b), NET_ERR_NULL);
    CHECK(b == NULL); /* outputs are NULL on failure */
    EXPECT(net_bus_new("{}", (size_t)-1, &b), NET_ERR_INVALID_ARG);
    CHECK(strstr(last_error(), "PTRDIFF_MAX") != NULL);
    EXPECT(net_bus_new("{\"data_dir\": \"\xff\"}", 17, &b), NET_ERR_UTF8);
    const char *bad = "{\"data_dir\": \"/tmp/x\", \"shards\": 0}";
    EXPECT(net_bus_new(bad, strlen(bad), &b), NET_ERR_CONFIG);
    CHECK(b == NULL);
    CHECK(strstr(last_error(), "shards") != NULL);
    const char *typo = "{\"data_dir\": \"/tmp/x\", \"lane\": {\"backpressure\": {\"mode\": \"dropp_newest\"}}}";
    EXPECT(net_bus_new(typo, strlen(typo), &b), NET_ERR_CONFIG);
    CHECK(strstr(last_error(), "backpressure") != NULL);

    /* net_last_error: a size query, a too small buffer (the message is kept). */
    size_t needed = 0;
    EXPECT(net_last_error(NULL, 0, &needed), NET_ERR_BUFFER_TOO_SMALL);
    CHECK(needed > 1);
    char small[4];
    EXPECT(net_last_error(small, sizeof small, &needed), NET_ERR_BUFFER_TOO_SMALL);
    char *msg = malloc(needed);
    EXPECT(net_last_error(msg, needed, &needed), NET_OK);
    CHECK(strlen(msg) + 1 == needed && strstr(msg, "backpressure") != NULL);
    free(msg);
    EXPECT(net_last_error(small, sizeof small, NULL), NET_ERR_NULL);

    char dir[512];
    bus = start_bus(dir, sizeof dir, 2);

    /* Handles: NULL, misaligned, foreign. */
    const uint8_t payload[] = "payload";
    EXPECT(net_ingest(NULL, NULL, 0, payload, 7), NET_ERR_NULL);
    EXPECT(net_ingest((const net_bus *)((const char *)bus + 1), NULL, 0, payload, 7), NET_ERR_MISALIGNED);
    static uint64_t foreign[16];
    EXPECT(net_ingest((const net_bus *)foreign, NULL, 0, payload, 7), NET_ERR_BAD_HANDLE);
    EXPECT(net_flush((const net_bus *)foreign, 0), NET_ERR_BAD_HANDLE);

    /* Lengths and pointers of ingest. */
    EXPECT(net_ingest(bus, NULL, 0, payload, (size_t)-1), NET_ERR_INVALID_ARG);
    EXPECT(net_ingest(bus, payload, (size_t)-1, payload, 7), NET_ERR_INVALID_ARG);
    EXPECT(net_ingest(bus, NULL, 0, NULL, 7), NET_ERR_NULL);
    EXPECT(net_ingest(bus, NULL, 0, NULL, 0), NET_OK); /* an empty event needs no pointer */
    EXPECT(net_ingest_durable(bus, payload, 3, payload, 7), NET_OK);

    /* A batch with refused entries: 1 (NULL with a length) and 3 (length -1). */
    const uint8_t *keys[5] = {payload, payload, payload, payload, payload};
    size_t key_lens[5] = {1, 1, 1, 1, 1};
    const uint8_t *payloads[5] = {payload, NULL, payload, payload, payload};
    size_t payload_lens[5] = {7, 7, 7, (size_t)-1, 7};
    size_t failed[5] = {99, 99, 99, 99, 99};
    size_t failed_len = 99;
    EXPECT(net_ingest_batch(bus, keys, key_lens, payloads, payload_lens, 5, failed, 5, &failed_len), NET_ERR_PARTIAL);
    CHECK(failed_len == 2 && failed[0] == 1 && failed[1] == 3 && failed[2] == 99);
    EXPECT(net_ingest_batch(bus, keys, key_lens, payloads, payload_lens, 5, NULL, 0, &failed_len), NET_ERR_PARTIAL);
    CHECK(failed_len == 2);
    EXPECT(net_ingest_batch(bus, keys, key_lens, payloads, payload_lens, 5, failed, 1, &failed_len), NET_ERR_PARTIAL);
    CHECK(failed_len == 2 && failed[0] == 1); /* only `cap` indices written */
    EXPECT(net_ingest_batch(bus, keys, key_lens, payloads, payload_lens, 5, failed, 5, NULL), NET_ERR_NULL);
    EXPECT(net_ingest_batch(bus, NULL, key_lens, payloads, payload_lens, 5, failed, 5, &failed_len), NET_ERR_NULL);
    CHECK(failed_len == 5); /* the whole call failed: every entry is reported */
    EXPECT(net_ingest_batch(bus, keys, key_lens, payloads, payload_lens, (size_t)-1, failed, 5, &failed_len), NET_ERR_INVALID_ARG);
    payloads[1] = payload;
    payload_lens[3] = 7;
    EXPECT(net_ingest_batch(bus, keys, key_lens, payloads, payload_lens, 5, failed, 5, &failed_len), NET_OK);
    CHECK(failed_len == 0);
    /* So far: 1 + 1 + 3 * 3 + 5 = 16 events. Add 84 more to make 100. */
    for (int i = 0; i < 84; i++) {
        EXPECT(net_ingest(bus, (const uint8_t *)&i, sizeof i, payload, 7), NET_OK);
    }
    EXPECT(net_flush(bus, 10000), NET_OK);

    /* A tiny poll buffer: too small, the size needed, nothing consumed; the retry gets all. */
    net_poll_info info;
    uint8_t tiny[16];
    char next[256];
    EXPECT(net_poll(bus, NULL, 0, 1000, tiny, sizeof tiny, next, sizeof next, &info), NET_ERR_BUFFER_TOO_SMALL);
    CHECK(info.bytes_needed > sizeof tiny && info.events == 0 && info.cursor_needed > 0);
    size_t need = info.bytes_needed;
    EXPECT(net_poll(bus, NULL, 0, 1000, NULL, 0, next, 2, &info), NET_ERR_BUFFER_TOO_SMALL);
    CHECK(info.bytes_needed == need && info.cursor_needed > 2);
    uint8_t *buf = aligned_alloc(8, (need + 7) & ~(size_t)7);
    EXPECT(net_poll(bus, NULL, 0, 1000, buf, need, next, sizeof next, &info), NET_OK);
    CHECK(info.events == 100 && info.bytes_used == need);
    /* Waiting for the first event polled back to be durable; then every refusal. */
    const net_event_header *first = (const net_event_header *)buf;
    net_event_id id = {first->seq, first->shard, {0, 0, 0}};
    EXPECT(net_wait_durable(bus, &id, 1, 10000), NET_OK);
    EXPECT(net_wait_durable(bus, NULL, 0, 0), NET_OK);
    EXPECT(net_wait_durable(bus, NULL, 1, 0), NET_ERR_NULL);
    EXPECT(net_wait_durable(bus, &id, (size_t)-1, 0), NET_ERR_INVALID_ARG);
    net_event_id nowhere = {0, 999, {0, 0, 0}};
    EXPECT(net_wait_durable(bus, &nowhere, 1, 0), NET_ERR_INVALID_ARG);
    /* Polling past the end returns nothing and echoes the cursor. */
    char after[256];
    EXPECT(net_poll(bus, next, info.cursor_len, 1000, buf, need, after, sizeof after, &info), NET_OK);
    CHECK(info.events == 0 && strcmp(after, next) == 0);
    free(buf);

    /* Cursors: garbage, invalid UTF-8, a length of -1. */
    EXPECT(net_poll(bus, "nope", 4, 10, NULL, 0, next, sizeof next, &info), NET_ERR_CURSOR);
    EXPECT(net_poll(bus, "\xff", 1, 10, NULL, 0, next, sizeof next, &info), NET_ERR_UTF8);
    EXPECT(net_poll(bus, "x", (size_t)-1, 10, NULL, 0, next, sizeof next, &info), NET_ERR_INVALID_ARG);
    EXPECT(net_poll(bus, NULL, 0, 10, NULL, 0, next, sizeof next, NULL), NET_ERR_NULL);

    /* The allocated form, freed twice and with NULL. */
    net_poll_result res;
    EXPECT(net_poll_alloc(bus, NULL, 0, 1000, &res), NET_OK);
    CHECK(res.events_len == 100 && res.next_cursor != NULL);
    CHECK(res.events[99].payload_len == 7 && memcmp(res.events[99].payload, payload, 7) == 0);
    EXPECT(net_poll_result_free(&res), NET_OK);
    CHECK(res.events == NULL && res.data == NULL && res.next_cursor == NULL && res.events_len == 0);
    EXPECT(net_poll_result_free(&res), NET_OK);
    EXPECT(net_poll_result_free(NULL), NET_OK);
    EXPECT(net_poll_alloc(bus, "nope", 4, 10, &res), NET_ERR_CURSOR);
    CHECK(res.events == NULL && res.next_cursor == NULL);

    net_stats st;
    EXPECT(net_bus_stats(bus, &st), NET_OK);
    CHECK(st.ingested == 100 && st.shards == 2);
    EXPECT(net_bus_stats(bus, NULL), NET_ERR_NULL);

    /* Two concurrent shutdowns: both succeed with the same, real, report. */
    net_shutdown_report r1, r2;
    pthread_t t1, t2;
    CHECK(pthread_create(&t1, NULL, shutdown_thread, &r1) == 0);
    CHECK(pthread_create(&t2, NULL, shutdown_thread, &r2) == 0);
    CHECK(pthread_join(t1, NULL) == 0 && pthread_join(t2, NULL) == 0);
    CHECK(!r1.lossy && !r2.lossy && r1.ingested == 100 && r2.ingested == 100 && r1.persisted == 100);
    EXPECT(net_bus_shutdown(bus, 0, NULL), NET_OK);

    /* Use after shutdown: refused, never undefined. */
    EXPECT(net_ingest(bus, NULL, 0, payload, 7), NET_ERR_CLOSED);
    EXPECT(net_ingest_batch(bus, keys, key_lens, payloads, payload_lens, 5, failed, 5, &failed_len), NET_ERR_CLOSED);
    CHECK(failed_len == 5);
    EXPECT(net_flush(bus, 0), NET_ERR_CLOSED);
    EXPECT(net_poll(bus, NULL, 0, 10, NULL, 0, next, sizeof next, &info), NET_ERR_CLOSED);
    EXPECT(net_wait_durable(bus, NULL, 0, 0), NET_ERR_CLOSED);
    EXPECT(net_bus_stats(bus, &st), NET_OK); /* the final figures stay readable */
    CHECK(st.persisted == 100 && st.in_flight == 0);

    /* Free: once, then a double free and NULL are refused / no-ops without UB. */
    EXPECT(net_bus_free(bus), NET_OK);
    EXPECT(net_bus_free(bus), NET_ERR_BAD_HANDLE);
    EXPECT(net_bus_free(NULL), NET_OK);
    EXPECT(net_flush(bus, 0), NET_ERR_BAD_HANDLE);

    /* A bus freed without shutdown stops at once. */
    char dir2[512];
    net_bus *b2 = start_bus(dir2, sizeof dir2, 1);
    EXPECT(net_ingest(b2, NULL, 0, payload, 7), NET_OK);
    EXPECT(net_bus_free(b2), NET_OK);
    /* A freed handle, even on the hot path, is refused; and a later bus at a reused address
       cannot be named by the stale handle (freed handles are never recycled). */
    EXPECT(net_ingest(b2, NULL, 0, payload, 7), NET_ERR_BAD_HANDLE);
    char dir3[512];
    net_bus *b3 = start_bus(dir3, sizeof dir3, 1);
    CHECK(b3 != b2);
    EXPECT(net_bus_free(b2), NET_ERR_BAD_HANDLE);
    EXPECT(net_ingest(b3, NULL, 0, payload, 7), NET_OK);
    EXPECT(net_bus_free(b3), NET_OK);
    remove_dir(dir3);

    remove_dir(dir);
    remove_dir(dir2);
    printf("errors: every error path returned its code\n");
    return 0;
}
