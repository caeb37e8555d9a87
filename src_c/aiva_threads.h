/* How many threads the BLAS products of concurrent engine calls may use together.
 *
 * The OpenBLAS builds aiva_cy runs on (NumPy's wheel, scipy-openblas32, SciPy's wheel) are
 * pthreads builds, where the thread count is one process-wide number: their
 * openblas_set_num_threads_local() sets that same number (only OpenMP builds keep one per
 * thread).  So the count is shared out instead: each engine call enters, and while n calls
 * are in flight the BLAS runs max(1, budget / n) threads, so that calls which overlap
 * never queue behind one another on OpenBLAS's pool of worker threads.  MKL has a real
 * per-thread count (MKL_Set_Num_Threads_Local), set for the calling thread on entry.
 *
 * All functions are safe to call from any thread, with or without the GIL. */
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
int aiva_threads_in_flight(void);

/* Around one engine call's products: enter returns this call's share of the budget. */
int aiva_threads_enter(int mkl);
void aiva_threads_leave(int mkl);

#endif
