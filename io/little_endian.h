// Fixed-width integers in vecwal's on-disk formats: little-endian, at a byte
// offset, asking no alignment of the buffer.
#pragma once

#include <bit>
#include <cstddef>
#include <cstring>

namespace vecwal {

static_assert(std::endian::native == std::endian::little,
              "vecwal's on-disk formats are little-endian; a big-endian host needs byte swaps here");

template <typename T>
void PutLE(std::byte* dst, size_t off, T v) {
  std::memcpy(dst + off, &v, sizeof(T));
}

template <typename T>
T GetLE(const std::byte* src, size_t off) {
  T v;
  std::memcpy(&v, src + off, sizeof(T));
  return v;
}

}  // namespace vecwal
