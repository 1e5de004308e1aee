/* A minimal C program on libnet: start a bus, ingest, flush, poll back, shut down.
 *   scripts/install.sh --prefix /tmp/net
 *   cc -std=c11 ffi/examples/hello.c $(PKG_CONFIG_PATH=/tmp/net/lib/pkgconfig pkg-config --cflags --libs net) -o hello
 *   LD_LIBRARY_PATH=/tmp/net/lib ./hello /tmp/hello-data
 */
#include <net.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char *what, net_result r) {
    char msg[512];
    size_t needed = 0;
    msg[0] = 0;
    net_last_error(msg, sizeof msg, &needed);
    fprintf(stderr, "%s: %s: %s\n", what, net_result_str(r), msg);
    return 1;
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "/tmp/net-hello";
    char config[1024];
    int n = snprintf(config, sizeof config, "{\"data_dir\": \"%s\", \"shards\": 1}", dir);
    net_bus *bus = NULL;
    net_result r = net_bus_new(config, (size_t)n, &bus);
    if (r != NET_OK) return fail("net_bus_new", r);

    for (int i = 0; i < 10; i++) {
        char payload[32];
        int len = snprintf(payload, sizeof payload, "hello %d", i);
        r = net_ingest(bus, (const uint8_t *)"greetings", 9, (const uint8_t *)payload, (size_t)len);
        if (r != NET_OK) return fail("net_ingest", r);
    }
    if ((r = net_flush(bus, 5000)) != NET_OK) return fail("net_flush", r);

    /* Poll from the start; the first call asks for the size needed. */
    char next[256];
    net_poll_info info;
    r = net_poll(bus, NULL, 0, 100, NULL, 0, next, sizeof next, &info);
    if (r != NET_OK && r != NET_ERR_BUFFER_TOO_SMALL) return fail("net_poll", r);
    uint8_t *buf = malloc(info.bytes_needed + 8);
    if ((r = net_poll(bus, NULL, 0, 100, buf, info.bytes_needed + 8, next, sizeof next, &info)) != NET_OK)
        return fail("net_poll", r);
    size_t at = 0;
    for (size_t e = 0; e < info.events; e++) {
        net_event_header h;
        memcpy(&h, buf + at, sizeof h);
        printf("shard %u seq %llu: %.*s\n", (unsigned)h.shard, (unsigned long long)h.seq,
               (int)h.payload_len, (const char *)(buf + at + NET_EVENT_HEADER_BYTES));
        at += NET_EVENT_HEADER_BYTES + ((h.payload_len + 7u) & ~7u);
    }
    printf("next cursor: %s\n", next);
    free(buf);

    net_shutdown_report report;
    if ((r = net_bus_shutdown(bus, 5000, &report)) != NET_OK) return fail("net_bus_shutdown", r);
    printf("ingested %llu, persisted %llu, lossy %d\n", (unsigned long long)report.ingested,
           (unsigned long long)report.persisted, report.lossy);
    net_bus_free(bus);
    return 0;
}
