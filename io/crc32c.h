// CRC32C (Castagnoli), the checksum of every byte vecwal writes to disk.
//
// Computed by Intel's ISA-L (crc32_iscsi), which picks the fastest kernel the
// CPU has (PCLMULQDQ folding, SSE4.2, or a table) at run time; tested against
// RFC 3720's vectors in tests/io_test.cc.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace vecwal::crc32c {

// Returns the CRC32C of `init_crc` (a previous Value/Extend result, or 0)
// continued over data[0, n).
uint32_t Extend(uint32_t init_crc, const void* data, size_t n);

inline uint32_t Value(const void* data, size_t n) { return Extend(0, data, n); }
inline uint32_t Value(std::span<const std::byte> s) { return Extend(0, s.data(), s.size()); }

}  // namespace vecwal::crc32c
