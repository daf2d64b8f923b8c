// AlignedBuffer: a heap buffer whose address and size suit O_DIRECT.
//
// Move-only; the memory is freed by the destructor. Contents start zeroed,
// unless made with kUninitialized for a buffer a read is about to fill
// (zeroing a 300 MB checkpoint section first cost as much as copying it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace vecwal {

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  // `alignment` must be a power of two; `size` is rounded up to it.
  AlignedBuffer(size_t size, size_t alignment);
  enum Uninitialized { kUninitialized };
  AlignedBuffer(size_t size, size_t alignment, Uninitialized);
  AlignedBuffer(AlignedBuffer&& o) noexcept;
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer();

  std::byte* data() { return data_; }
  const std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  size_t alignment() const { return alignment_; }
  std::span<std::byte> span() { return {data_, size_}; }
  std::span<const std::byte> span() const { return {data_, size_}; }

 private:
  std::byte* data_ = nullptr;
  size_t size_ = 0;
  size_t alignment_ = 0;
};

inline constexpr uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }
inline constexpr uint64_t AlignDown(uint64_t v, uint64_t a) { return v / a * a; }

}  // namespace vecwal
