#include "wal/format.h"

#include <cstdio>
#include <chrono>
#include <cstring>
#include <mutex>
#include <random>

#include "io/crc32c.h"
#include "io/little_endian.h"

namespace vecwal::wal {

bool IsKnownRecordType(uint8_t t) { return t >= 1 && t <= 5; }

const char* ToString(RecordType t) {
  switch (t) {
    case RecordType::kUpsert: return "upsert";
    case RecordType::kDelete: return "delete";
    case RecordType::kBatch: return "batch";
    case RecordType::kCheckpointMarker: return "checkpoint";
    case RecordType::kOpaque: return "opaque";
  }
  return "unknown";
}

// Segment header layout (64 bytes, at offsets 0 and 2048 of block 0):
//   0 u64 magic  8 u32 version  12 u32 block_size  16 u64 segment_id
//  24 u64 epoch  32 u64 first_lsn  40 u64 segment_bytes  48 u64 created_unix_ns
//  56 u32 zero   60 u32 crc32c of bytes [0,60)
void EncodeSegmentHeader(const SegmentHeader& h, std::byte* dst) {
  std::memset(dst, 0, kSegmentHeaderSize);
  PutLE(dst, 0, kSegmentMagic);
  PutLE(dst, 8, kFormatVersion);
  PutLE(dst, 12, h.block_size);
  PutLE(dst, 16, h.segment_id);
  PutLE(dst, 24, h.epoch);
  PutLE(dst, 32, h.first_lsn);
  PutLE(dst, 40, h.segment_bytes);
  PutLE(dst, 48, h.created_unix_ns);
  PutLE(dst, 60, crc32c::Value(dst, 60));
}

std::optional<SegmentHeader> DecodeSegmentHeader(const std::byte* src) {
  if (GetLE<uint64_t>(src, 0) != kSegmentMagic || GetLE<uint32_t>(src, 8) != kFormatVersion) return std::nullopt;
  if (GetLE<uint32_t>(src, 60) != crc32c::Value(src, 60) || GetLE<uint32_t>(src, 56) != 0) return std::nullopt;
  SegmentHeader h;
  h.block_size = GetLE<uint32_t>(src, 12);
  h.segment_id = GetLE<uint64_t>(src, 16);
  h.epoch = GetLE<uint64_t>(src, 24);
  h.first_lsn = GetLE<uint64_t>(src, 32);
  h.segment_bytes = GetLE<uint64_t>(src, 40);
  h.created_unix_ns = GetLE<uint64_t>(src, 48);
  return h;
}

void EncodeRecordHeader(const RecordHeader& h, std::byte* dst) {
  PutLE(dst, 0, h.crc);
  PutLE(dst, 4, h.length);
  PutLE(dst, 8, h.lsn);
  PutLE(dst, 16, h.acked);
  PutLE(dst, 24, h.segment_id);
  std::memset(dst + 32, 0, 8);
  PutLE(dst, 32, h.type);
}

RecordHeader DecodeRecordHeader(const std::byte* src) {
  RecordHeader h;
  h.crc = GetLE<uint32_t>(src, 0);
  h.length = GetLE<uint32_t>(src, 4);
  h.lsn = GetLE<uint64_t>(src, 8);
  h.acked = GetLE<uint64_t>(src, 16);
  h.segment_id = GetLE<uint64_t>(src, 24);
  h.type = GetLE<uint8_t>(src, 32);
  for (int i = 33; i < 40; ++i)
    if (src[i] != std::byte{0}) h.type = 0;  // nonzero reserved bytes: never a valid record
  return h;
}

uint32_t RecordCrc(uint32_t payload_crc, const std::byte* header, uint64_t epoch) {
  uint32_t c = crc32c::Extend(payload_crc, header + 4, kRecordHeaderSize - 4);
  return crc32c::Extend(c, &epoch, sizeof(epoch));
}

bool IsZeroHeader(const std::byte* src) {
  uint64_t acc = 0;
  for (size_t i = 0; i < kRecordHeaderSize; i += 8) acc |= GetLE<uint64_t>(src, i);
  return acc == 0;
}

uint64_t NewSegmentEpoch() {
  static std::mutex mu;
  static std::mt19937_64 rng(std::random_device{}() ^
                             static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()));
  std::lock_guard lk(mu);
  uint64_t e;
  do e = rng(); while (e == 0);
  return e;
}

std::string NumberedFileName(std::string_view prefix, uint64_t n, std::string_view suffix) {
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(n));
  return std::string(prefix) + hex + std::string(suffix);
}

std::optional<uint64_t> ParseNumberedFileName(const std::string& name, std::string_view prefix,
                                              std::string_view suffix) {
  if (name.size() != prefix.size() + 16 + suffix.size() || name.compare(0, prefix.size(), prefix) != 0 ||
      name.compare(prefix.size() + 16, suffix.size(), suffix) != 0)
    return std::nullopt;
  uint64_t n = 0;
  for (size_t i = prefix.size(); i < prefix.size() + 16; ++i) {
    char c = name[i];
    int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
    if (d < 0) return std::nullopt;
    n = n << 4 | static_cast<uint64_t>(d);
  }
  return n;
}

std::string SegmentFileName(uint64_t segment_id) { return NumberedFileName("wal-", segment_id, ".log"); }

std::optional<uint64_t> ParseSegmentFileName(const std::string& name) {
  return ParseNumberedFileName(name, "wal-", ".log");
}

}  // namespace vecwal::wal
