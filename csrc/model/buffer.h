// Model memory on the backend's device: a model's parameters, gradients,
// optimizer moments, activations, KV cache, packed weights, recurrent state
// and token ids each live in a Buffer, which takes its memory from the
// kernel table (alloc / release) and moves data across the host boundary
// (upload / download), so that model code never knows where it runs.
#pragma once
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>

#include "kernels.h"
#include "out_of_memory.h"

namespace fastlm {

template <class T>
class Buffer {
 public:
  explicit Buffer(const Kernels& k) : k_(&k) {}
  ~Buffer() { k_->release(p_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept : k_(o.k_), p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  Buffer& operator=(Buffer&& o) noexcept {
    std::swap(k_, o.k_), std::swap(p_, o.p_), std::swap(n_, o.n_);
    return *this;
  }

  T* data() { return p_; }
  const T* data() const { return p_; }
  int64_t size() const { return n_; }

  // Room for n elements, contents undefined: reallocates only to grow, and
  // then drops the old contents (a failed allocation leaves the buffer empty).
  void reserve(int64_t n, const char* what) {
    if (n <= n_) return;
    if (n > std::numeric_limits<int64_t>::max() / (int64_t)sizeof(T))
      throw OutOfMemory(what, n, sizeof(T));
    k_->release(p_);
    p_ = nullptr, n_ = 0;
    try {
      p_ = static_cast<T*>(k_->alloc(n * (int64_t)sizeof(T)));
    } catch (const std::bad_alloc&) {  // say what the memory was for
      throw OutOfMemory(what, n, sizeof(T), std::string(k_->device) == "cuda" ? "GPU memory" : "memory");
    }
    n_ = n;
  }
  // Exactly n float32 zeros (float buffers only: the table's zero kernel).
  void assign_zeros(int64_t n, const char* what) {
    static_assert(std::is_same<T, float>::value, "assign_zeros is for float buffers");
    if (n != n_) {
      k_->release(p_);
      p_ = nullptr, n_ = 0;
      reserve(n, what);
    }
    k_->zero(p_, n);
  }
  // n elements from / to host memory at element offset `at`.
  void upload(const T* host, int64_t n, int64_t at = 0) {
    k_->upload(p_ + at, host, n * (int64_t)sizeof(T));
  }
  void download(T* host, int64_t n, int64_t at = 0) const {
    k_->download(host, p_ + at, n * (int64_t)sizeof(T));
  }

 private:
  const Kernels* k_;
  T* p_ = nullptr;
  int64_t n_ = 0;
};

// Uploads n token ids into `to` (grown as needed); returns its device pointer.
inline const int64_t* upload_ids(Buffer<int64_t>& to, const int64_t* host, int64_t n) {
  to.reserve(n, "token ids");
  to.upload(host, n);
  return to.data();
}

// Lays consecutive pieces over one block of memory (a model's activations
// over one Buffer): take(n) is the next n elements' start. Over a null block
// it only counts (every start null): taken() is then the block's size.
template <class T>
class Carve {
 public:
  explicit Carve(T* p) : p_(p) {}
  T* operator()(int64_t n) {
    T* r = p_ ? p_ + n_ : nullptr;
    n_ += n;
    return r;
  }
  int64_t taken() const { return n_; }

 private:
  T* p_;
  int64_t n_ = 0;
};

}  // namespace fastlm
