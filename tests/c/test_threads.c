/* The thread budget's admission (src_c/aiva_threads.c) without a BLAS attached: the
 * budget is set directly, and threads that enter and hold their place until told show
 * the cap on calls in flight, arrival order, nesting and the shares.  Nothing is timed:
 * each step waits for the state it needs (polling the counters), with a generous limit
 * that fails the run instead of hanging. */
#ifndef _WIN32
#define _POSIX_C_SOURCE 200809L
#endif
#include "aiva_threads.h"

#include <stdio.h>
#include <stdlib.h>

#ifdef _WIN32
#include <windows.h>
typedef HANDLE thread_t;
static void pause_ms(void) { Sleep(1); }
#else
#include <pthread.h>
#include <time.h>
typedef pthread_t thread_t;
static void pause_ms(void)
{
    struct timespec ts = {0, 1000000L};
    nanosleep(&ts, NULL);
}
#endif

static int checks = 0, failed = 0;
#define CHECK(cond)                                                              \
    do {                                                                         \
        checks++;                                                                \
        if (!(cond)) {                                                           \
            failed++;                                                            \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                        \
    } while (0)

/* One caller: enters, records its share and admission order, waits for `release`. */
struct holder {
    volatile int admitted;
    volatile int release;
    volatile int share;
    volatile int order;
    thread_t thread;
};

#ifdef _WIN32
static volatile LONG admissions = 0;
static int next_order(void) { return (int)InterlockedIncrement(&admissions); }
#else
static volatile int admissions = 0;
static int next_order(void) { return __sync_add_and_fetch(&admissions, 1); }
#endif

static void hold(struct holder *h)
{
    h->share = aiva_threads_enter(0);
    h->order = next_order();
    h->admitted = 1;
    while (!h->release) pause_ms();
    aiva_threads_leave(0);
}

#ifdef _WIN32
static DWORD WINAPI run_holder(LPVOID arg) { hold((struct holder *)arg); return 0; }
static void start(struct holder *h)
{
    h->admitted = h->release = 0;
    h->thread = CreateThread(NULL, 0, run_holder, h, 0, NULL);
}
static void join(struct holder *h) { WaitForSingleObject(h->thread, INFINITE); CloseHandle(h->thread); }
#else
static void *run_holder(void *arg) { hold((struct holder *)arg); return NULL; }
static void start(struct holder *h)
{
    h->admitted = h->release = 0;
    pthread_create(&h->thread, NULL, run_holder, h);
}
static void join(struct holder *h) { pthread_join(h->thread, NULL); }
#endif

static int until(volatile int *flag)
{
    int i;
    for (i = 0; i < 60000 && !*flag; i++) pause_ms();
    return *flag;
}

static int until_waiting(int n)
{
    int i;
    for (i = 0; i < 60000 && aiva_threads_waiting() != n; i++) pause_ms();
    return aiva_threads_waiting() == n;
}

static void finish(struct holder *h)
{
    h->release = 1;
    join(h);
}

int main(void)
{
    struct holder h[6];
    int i;

    /* Nested enters on one thread are one call. */
    aiva_threads_set(4);
    aiva_threads_min_per_call(1);
    aiva_threads_hold(0.0);
    CHECK(aiva_threads_enter(0) == 4);
    CHECK(aiva_threads_enter(0) == 4);
    CHECK(aiva_threads_in_flight() == 1);
    aiva_threads_leave(0);
    CHECK(aiva_threads_in_flight() == 1);
    aiva_threads_leave(0);
    CHECK(aiva_threads_in_flight() == 0);

    /* Shares 4 // in flight; the fifth and sixth callers wait, and are let in first come
     * first served as places free. */
    for (i = 0; i < 4; i++) {
        start(&h[i]);
        CHECK(until(&h[i].admitted));
        CHECK(aiva_threads_in_flight() == i + 1);
    }
    CHECK(h[0].share == 4 && h[1].share == 2 && h[2].share == 1 && h[3].share == 1);
    start(&h[4]);
    CHECK(until_waiting(1));
    start(&h[5]);
    CHECK(until_waiting(2));
    CHECK(!h[4].admitted && !h[5].admitted && aiva_threads_in_flight() == 4);
    finish(&h[0]);
    CHECK(until(&h[4].admitted));
    CHECK(!h[5].admitted && aiva_threads_waiting() == 1 && aiva_threads_in_flight() == 4);
    finish(&h[1]);
    CHECK(until(&h[5].admitted));
    CHECK(h[4].order < h[5].order && h[4].share == 1 && h[5].share == 1);
    for (i = 2; i < 6; i++) finish(&h[i]);
    CHECK(aiva_threads_in_flight() == 0 && aiva_threads_waiting() == 0);

    /* min_per_call 2 of a budget of 4: two places, each call at least 2 threads; lowering
     * it lets the waiter in. */
    aiva_threads_min_per_call(2);
    start(&h[0]);
    CHECK(until(&h[0].admitted));
    start(&h[1]);
    CHECK(until(&h[1].admitted));
    start(&h[2]);
    CHECK(until_waiting(1));
    CHECK(h[0].share == 4 && h[1].share == 2 && aiva_threads_in_flight() == 2);
    aiva_threads_min_per_call(1);
    CHECK(until(&h[2].admitted));
    CHECK(h[2].share == 1 && aiva_threads_in_flight() == 3);
    for (i = 0; i < 3; i++) finish(&h[i]);

    /* A burst's share holds for the hold time: alone right after a burst of two, a call
     * still gets 4 // 2; with the hold over, all 4. */
    aiva_threads_hold(3600.0);
    start(&h[0]);
    CHECK(until(&h[0].admitted));
    start(&h[1]);
    CHECK(until(&h[1].admitted));
    finish(&h[0]);
    finish(&h[1]);
    CHECK(aiva_threads_enter(0) == 2);
    aiva_threads_leave(0);
    aiva_threads_hold(0.0);
    CHECK(aiva_threads_enter(0) == 4);
    aiva_threads_leave(0);

    /* A budget of 1: one call at a time. */
    aiva_threads_set(1);
    start(&h[0]);
    CHECK(until(&h[0].admitted));
    start(&h[1]);
    CHECK(until_waiting(1));
    finish(&h[0]);
    CHECK(until(&h[1].admitted));
    CHECK(h[1].share == 1);
    finish(&h[1]);
    CHECK(aiva_threads_in_flight() == 0);

    printf("aiva_threads: %d checks, %d failed\n", checks, failed);
    return failed ? 1 : 0;
}
