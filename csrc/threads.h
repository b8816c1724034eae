// The one thread pool (OpenMP), shared by every model of a cascade.
#pragma once
#include <omp.h>

#include <cstdint>

namespace mlspecqd {

int default_num_threads();  // physical cores this process may run on
int num_threads();
void set_num_threads(int n);  // throws std::invalid_argument for n < 1

// Calls body(begin, end) on contiguous slices of [0, n) that cover it exactly, one slice per thread;
// slice edges are multiples of `grain` (except the last). Order of work inside a slice is the caller's.
template <class Body>
void parallel_for(int64_t n, int64_t grain, Body body) {
    const int threads = num_threads();
    const int64_t chunks = (n + grain - 1) / grain;
    if (threads <= 1 || chunks <= 1) {
        body(int64_t{0}, n);
        return;
    }
#pragma omp parallel num_threads(threads)
    {
        const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
        const int64_t begin = (chunks * t / nt) * grain;
        const int64_t end = t + 1 == nt ? n : (chunks * (t + 1) / nt) * grain;
        if (begin < end) body(begin, end < n ? end : n);
    }
}

}  // namespace mlspecqd
