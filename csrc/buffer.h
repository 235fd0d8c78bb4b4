// buffer.h: 64-byte aligned buffers (packed weights, workspaces). Alignment keeps every packed B row of a panel
// on its own cache lines.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace bortengine {

template <class T>
class AlignedArray {
  public:
    AlignedArray() = default;
    explicit AlignedArray(std::size_t n) { resize(n); }
    AlignedArray(const AlignedArray&) = delete;
    AlignedArray& operator=(const AlignedArray&) = delete;
    AlignedArray(AlignedArray&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr; o.n_ = 0; }
    AlignedArray& operator=(AlignedArray&& o) noexcept {
        if (this != &o) { std::free(p_); p_ = o.p_; n_ = o.n_; o.p_ = nullptr; o.n_ = 0; }
        return *this;
    }
    ~AlignedArray() { std::free(p_); }

    // Grows only; discards the contents when it grows.
    void resize(std::size_t n) {
        if (n <= n_) return;
        std::free(p_);
        p_ = nullptr;
        n_ = 0;
        void* p = nullptr;
        const std::size_t bytes = (n ? n : 1) * sizeof(T);
        // Large buffers (packed weights, big workspaces) start on a 2 MiB boundary and ask for transparent huge
        // pages: weights are streamed once per forward, and with 4 KiB pages every few panels cost TLB misses.
        const std::size_t align = bytes >= kHugeThreshold ? kHugePage : 64;
        if (posix_memalign(&p, align, bytes) != 0) throw std::bad_alloc();
#if defined(MADV_HUGEPAGE)
        if (align == kHugePage) madvise(p, bytes, MADV_HUGEPAGE);  // a hint: failure only costs speed
#endif
        p_ = static_cast<T*>(p);
        n_ = n;
    }
    T* data() { return p_; }
    const T* data() const { return p_; }
    std::size_t size() const { return n_; }
    std::size_t bytes() const { return n_ * sizeof(T); }

  private:
    static constexpr std::size_t kHugePage = 2u << 20, kHugeThreshold = 4u << 20;
    T* p_ = nullptr;
    std::size_t n_ = 0;
};

using AlignedBuffer = AlignedArray<float>;

}  // namespace bortengine
