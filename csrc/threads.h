// The one thread pool (OpenMP), shared by every model of a cascade.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace mlspecqd {

int default_num_threads();  // physical cores this process may run on
int num_threads();
void set_num_threads(int n);  // throws std::invalid_argument for n < 1

// Thread t's slice of [0, n) when nt threads share it: contiguous, edges at multiples of `grain`
// (except the last), and the slices of t = 0 .. nt - 1 cover [0, n) exactly. Calls run(begin, end) if
// the slice is not empty.
template <class Run>
void run_thread_slice(int64_t n, int64_t grain, int64_t t, int64_t nt, Run&& run) {
    const int64_t chunks = (n + grain - 1) / grain;
    const int64_t begin = (chunks * t / nt) * grain;
    const int64_t end = t + 1 == nt ? n : std::min(n, (chunks * (t + 1) / nt) * grain);
    if (begin < end) run(begin, end);
}

// Calls body(begin, end) on contiguous slices of [0, n) that cover it exactly, one slice per thread;
// slice edges are multiples of `grain` (except the last). Order of work inside a slice is the caller's.
template <class Body>
void parallel_for(int64_t n, int64_t grain, Body body) {
    const int threads = num_threads();
    if (threads <= 1 || n <= grain) {
        if (n > 0) body(int64_t{0}, n);
        return;
    }
#pragma omp parallel num_threads(threads)
    run_thread_slice(n, grain, omp_get_thread_num(), omp_get_num_threads(), body);
}

// parallel_for(n, grain, body) preceded, in the same parallel region, by each thread's slice of
// [0, n_first) (grain grain_first) given to first(begin, end), and a barrier: work that every slice
// of `body` reads, shared out without a second fork and join of the pool. Each thread gets the
// slices parallel_for would give it.
template <class First, class Body>
void parallel_for_after(int64_t n_first, int64_t grain_first, First first, int64_t n, int64_t grain, Body body) {
    const int threads = num_threads();
    if (threads <= 1 || (n_first <= grain_first && n <= grain)) {
        if (n_first > 0) first(int64_t{0}, n_first);
        if (n > 0) body(int64_t{0}, n);
        return;
    }
#pragma omp parallel num_threads(threads)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        run_thread_slice(n_first, grain_first, t, nt, first);
#pragma omp barrier
        run_thread_slice(n, grain, t, nt, body);
    }
}

}  // namespace mlspecqd
