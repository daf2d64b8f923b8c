// CRC32C (Castagnoli), the checksum of every byte vecwal writes to disk.
//
// Uses the SSE4.2 crc32 instruction where the CPU has it, a table otherwise.
// Debian 12 packages no CRC32C library with hardware support, so this is the
// one checksum we carry ourselves; it is tested against RFC 3720's vectors.
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

// True when Extend uses the hardware instruction.
bool IsHardwareAccelerated();

}  // namespace vecwal::crc32c
