#include "io/aligned_buffer.h"

#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

namespace vecwal {

AlignedBuffer::AlignedBuffer(size_t size, size_t alignment) : AlignedBuffer(size, alignment, kUninitialized) {
  if (data_) std::memset(data_, 0, size_);
}

AlignedBuffer::AlignedBuffer(size_t size, size_t alignment, Uninitialized)
    : size_(AlignUp(size, alignment)), alignment_(alignment) {
  if (size_ == 0) return;
  void* p = std::aligned_alloc(alignment, size_);
  if (p == nullptr) throw std::bad_alloc();
  data_ = static_cast<std::byte*>(p);
}

AlignedBuffer::AlignedBuffer(AlignedBuffer&& o) noexcept
    : data_(std::exchange(o.data_, nullptr)),
      size_(std::exchange(o.size_, 0)),
      alignment_(std::exchange(o.alignment_, 0)) {}

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& o) noexcept {
  if (this != &o) {
    std::free(data_);
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
    alignment_ = std::exchange(o.alignment_, 0);
  }
  return *this;
}

AlignedBuffer::~AlignedBuffer() { std::free(data_); }

}  // namespace vecwal
