// Memory that starts on a cache line. The kernels load 64 bytes at a time; from a buffer that starts
// inside a line, every such load touches two lines (malloc and NumPy align to 16 bytes only).
#pragma once
#include <cstddef>
#include <memory>
#include <new>
#include <vector>

namespace mlspecqd {

inline constexpr std::align_val_t kCacheLine{64};

template <class T>
struct CacheAlignedAllocator {
    using value_type = T;

    CacheAlignedAllocator() = default;
    template <class U>
    CacheAlignedAllocator(const CacheAlignedAllocator<U>&) {}

    T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kCacheLine)); }
    void deallocate(T* p, size_t) { ::operator delete(p, kCacheLine); }

    template <class U>
    bool operator==(const CacheAlignedAllocator<U>&) const { return true; }
    template <class U>
    bool operator!=(const CacheAlignedAllocator<U>&) const { return false; }
};

template <class T>
using CacheAlignedVector = std::vector<T, CacheAlignedAllocator<T>>;

struct CacheAlignedDelete {
    void operator()(float* p) const { ::operator delete[](p, kCacheLine); }
};

// `count` floats, left uninitialised, so that their pages are touched only when written.
using CacheAlignedFloats = std::unique_ptr<float[], CacheAlignedDelete>;
inline CacheAlignedFloats cache_aligned_floats(size_t count) {
    return CacheAlignedFloats(static_cast<float*>(::operator new[](count * sizeof(float), kCacheLine)));
}

}  // namespace mlspecqd
