/* `net-bench ffi`'s C side: ingest through libnet's C API and count every allocation of the
 * process.
 *
 * Usage: ffi_bench <config-json> <events> <threads> <warmup-events>
 *
 * Linked with -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=posix_memalign,
 * --wrap=aligned_alloc: every call to those functions from this program and from libnet.a
 * (Rust's global allocator is the system malloc) goes through the __wrap_* functions below,
 * which count it and forward to the real one. Calls glibc makes internally are not counted.
 *
 * Each thread ingests warmup/threads events (its first ingest creates its producer), waits
 * on a barrier, then ingests events/threads 100-byte events with 8-byte keys via net_ingest.
 * The window runs from the release of the threads until net_flush returns after they are
 * joined; the allocation counter is read at both ends. Prints one line:
 *   events=<n> seconds=<s> allocs=<a>
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "net.h"

#define PAYLOAD_BYTES 100

static _Atomic uint64_t allocations;

void *__real_malloc(size_t size);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *ptr, size_t size);
int __real_posix_memalign(void **out, size_t align, size_t size);
void *__real_aligned_alloc(size_t align, size_t size);

static inline void count(void) { atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed); }

void *__wrap_malloc(size_t size) {
    count();
    return __real_malloc(size);
}

void *__wrap_calloc(size_t n, size_t size) {
    count();
    return __real_calloc(n, size);
}

void *__wrap_realloc(void *ptr, size_t size) {
    count();
    return __real_realloc(ptr, size);
}

int __wrap_posix_memalign(void **out, size_t align, size_t size) {
    count();
    return __real_posix_memalign(out, align, size);
}

void *__wrap_aligned_alloc(size_t align, size_t size) {
    count();
    return __real_aligned_alloc(align, size);
}

static net_bus *bus;
static uint64_t per_thread;
static uint64_t warmup_per_thread;
static pthread_barrier_t warmed, release;

static void fail(const char *what, net_result r) {
    char msg[1024];
    size_t needed = 0;
    msg[0] = 0;
    net_last_error(msg, sizeof msg, &needed);
    fprintf(stderr, "ffi_bench: %s: %s: %s\n", what, net_result_str(r), msg);
    exit(1);
}

/* Event i of thread t: the key is (t << 32 | i), 8 bytes; the payload starts with it. */
static void ingest(uint32_t t, uint64_t from, uint64_t count_, uint8_t *payload) {
    for (uint64_t i = from; i < from + count_; i++) {
        uint64_t key = ((uint64_t)t << 32) | (i & 0xffffffffu);
        memcpy(payload, &key, sizeof key);
        net_result r;
        while ((r = net_ingest(bus, (const uint8_t *)&key, sizeof key, payload, PAYLOAD_BYTES)) == NET_ERR_FULL) {
        }
        if (r != NET_OK) {
            fail("net_ingest", r);
        }
    }
}

static void *producer(void *arg) {
    uint32_t t = (uint32_t)(uintptr_t)arg;
    uint8_t payload[PAYLOAD_BYTES];
    memset(payload, 0x5a, sizeof payload);
    ingest(t, 0, warmup_per_thread, payload);
    pthread_barrier_wait(&warmed);
    pthread_barrier_wait(&release);
    ingest(t, warmup_per_thread, per_thread, payload);
    return NULL;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s <config-json> <events> <threads> <warmup-events>\n", argv[0]);
        return 2;
    }
    const char *config = argv[1];
    uint64_t events = strtoull(argv[2], NULL, 10);
    unsigned threads = (unsigned)strtoul(argv[3], NULL, 10);
    uint64_t warmup = strtoull(argv[4], NULL, 10);
    if (threads == 0 || events < threads) {
        fprintf(stderr, "ffi_bench: need threads >= 1 and events >= threads\n");
        return 2;
    }
    per_thread = events / threads;
    warmup_per_thread = warmup / threads;

    net_result r = net_bus_new(config, strlen(config), &bus);
    if (r != NET_OK) {
        fail("net_bus_new", r);
    }
    pthread_t *th = malloc(sizeof *th * threads);
    if (th == NULL || pthread_barrier_init(&warmed, NULL, threads + 1) != 0 ||
        pthread_barrier_init(&release, NULL, threads + 1) != 0) {
        fprintf(stderr, "ffi_bench: set-up failed\n");
        return 1;
    }
    for (unsigned t = 0; t < threads; t++) {
        if (pthread_create(&th[t], NULL, producer, (void *)(uintptr_t)t) != 0) {
            fprintf(stderr, "ffi_bench: pthread_create failed\n");
            return 1;
        }
    }
    pthread_barrier_wait(&warmed);
    if ((r = net_flush(bus, UINT64_MAX)) != NET_OK) {
        fail("net_flush (warm-up)", r);
    }

    uint64_t allocs_before = atomic_load(&allocations);
    double start = now_s();
    pthread_barrier_wait(&release);
    for (unsigned t = 0; t < threads; t++) {
        pthread_join(th[t], NULL);
    }
    if ((r = net_flush(bus, UINT64_MAX)) != NET_OK) {
        fail("net_flush", r);
    }
    double seconds = now_s() - start;
    uint64_t allocs = atomic_load(&allocations) - allocs_before;

    net_shutdown_report report;
    if ((r = net_bus_shutdown(bus, 10000, &report)) != NET_OK) {
        fail("net_bus_shutdown", r);
    }
    if (report.lossy || report.failed_shards || report.panicked_shards) {
        fprintf(stderr, "ffi_bench: shutdown was not clean (lossy %d, failed %u, panicked %u)\n",
                (int)report.lossy, report.failed_shards, report.panicked_shards);
        return 1;
    }
    net_bus_free(bus);
    free(th);
    printf("events=%llu seconds=%.6f allocs=%llu\n", (unsigned long long)(per_thread * threads), seconds,
           (unsigned long long)allocs);
    return 0;
}
