// buffer.h: a 64-byte aligned float buffer (packed weights, workspaces). Alignment keeps every packed B row
// of a panel on its own cache lines.
#pragma once
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>

namespace bortengine {

class AlignedBuffer {
  public:
    AlignedBuffer() = default;
    explicit AlignedBuffer(std::size_t n) { resize(n); }
    AlignedBuffer(const AlignedBuffer&) = delete;
    AlignedBuffer& operator=(const AlignedBuffer&) = delete;
    AlignedBuffer(AlignedBuffer&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr; o.n_ = 0; }
    AlignedBuffer& operator=(AlignedBuffer&& o) noexcept {
        if (this != &o) { std::free(p_); p_ = o.p_; n_ = o.n_; o.p_ = nullptr; o.n_ = 0; }
        return *this;
    }
    ~AlignedBuffer() { std::free(p_); }

    // Discards the contents when it grows.
    void resize(std::size_t n) {
        if (n <= n_) return;
        std::free(p_);
        p_ = nullptr;
        n_ = 0;
        void* p = nullptr;
        if (posix_memalign(&p, 64, (n ? n : 1) * sizeof(float)) != 0) throw std::bad_alloc();
        p_ = static_cast<float*>(p);
        n_ = n;
    }
    float* data() { return p_; }
    const float* data() const { return p_; }
    std::size_t size() const { return n_; }
    std::size_t bytes() const { return n_ * sizeof(float); }

  private:
    float* p_ = nullptr;
    std::size_t n_ = 0;
};

}  // namespace bortengine
