/* How many threads the BLAS products of concurrent engine calls may use together.
 *
 * The OpenBLAS builds aiva_cy runs on (NumPy's wheel, scipy-openblas32, SciPy's wheel) are
 * pthreads builds, where the thread count is one process-wide number: their
 * openblas_set_num_threads_local() sets that same number (only OpenMP builds keep one per
 * thread).  So the count is shared out instead, and the calls in flight are capped:
 *
 *  - a call never runs on fewer than m = min(aiva_threads_min_per_call(), budget) threads,
 *    so at most budget / m calls run their products at once; a later caller waits
 *    (asleep, in arrival order) until one of them leaves.  The threads in use never
 *    exceed the budget however many Python threads call;
 *  - a call runs budget / n threads, n being how many calls were in flight or waiting
 *    (at most budget / m) at the most contended moment of the last aiva_threads_hold()
 *    seconds: a burst of callers keeps the small share until it has been over for that
 *    long, instead of flipping between counts as calls come and go (each raise wakes
 *    OpenBLAS's workers, which then spin on cores other callers need).  A caller alone
 *    for that long gets the whole budget.
 *
 * MKL has a real per-thread count (MKL_Set_Num_Threads_Local), set for the calling thread
 * on entry.  With nothing attached and no budget set, calls are neither capped nor shared.
 *
 * All functions are safe to call from any thread, with or without the GIL; enter may
 * block, so call it without the GIL. */
#ifndef AIVA_THREADS_H
#define AIVA_THREADS_H

#define AIVA_THREADS_OPENBLAS 0
#define AIVA_THREADS_MKL 1

/* Find the thread-count functions of the library at `path` (already loaded by the BLAS
 * loader; opening it again only takes a reference).  Returns 0, or -1 where the library
 * has none (the calls then run with whatever count the library has). */
int aiva_threads_attach(const char *path, int kind);

/* Set the budget (>= 1) and write it to the libraries now; returns the count in force. */
int aiva_threads_set(int n);
/* The budget: the last one set here, or a count someone else (threadpoolctl, say) set
 * in the library since. */
int aiva_threads_get(void);
/* The library's own current count (-1 where none is attached); for MKL, the calling
 * thread's. */
int aiva_threads_blas(int kind);
/* Calls admitted and running their products, and calls waiting to be admitted. */
int aiva_threads_in_flight(void);
int aiva_threads_waiting(void);

/* Around one engine call's products: enter waits for a place among the calls in flight
 * and returns this call's share of the budget; leave gives the place to the longest
 * waiting caller.  Nested pairs on one thread (an enter while that thread's call is
 * in flight) are the same call: they never wait and return the share in force. */
int aiva_threads_enter(int mkl);
void aiva_threads_leave(int mkl);

/* The fewest threads an overlapping call runs on (>= 1; 2 unless set); returns the value
 * before.  n < 1 only reads it. */
int aiva_threads_min_per_call(int n);

/* How long (seconds) a burst of overlapping calls keeps its shares after it ends; returns
 * the value before.  0: the share follows the calls in flight at each entry; a negative
 * value only reads it. */
double aiva_threads_hold(double seconds);

#endif
