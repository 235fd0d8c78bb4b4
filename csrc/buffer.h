// buffer.h: 64-byte aligned buffers (packed weights, workspaces). Alignment keeps every packed B row of a panel
// on its own cache lines.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

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
        if (posix_memalign(&p, 64, (n ? n : 1) * sizeof(T)) != 0) throw std::bad_alloc();
        p_ = static_cast<T*>(p);
        n_ = n;
    }
    T* data() { return p_; }
    const T* data() const { return p_; }
    std::size_t size() const { return n_; }
    std::size_t bytes() const { return n_ * sizeof(T); }

  private:
    T* p_ = nullptr;
    std::size_t n_ = 0;
};

using AlignedBuffer = AlignedArray<float>;

}  // namespace bortengine
