// The on-disk format of vecwal's log; docs/FORMAT.md is the prose twin.
//
// A log is a directory of segment files `wal-<id as 16 hex digits>.log`, each
// of a fixed size, preallocated with zeros (or recycled). Block 0 holds the
// segment header twice (offsets 0 and 2048, so one torn or flipped sector
// leaves a readable copy). Records follow from block 1, each 8-byte aligned.
// Every flush starts on a block boundary and is padded with zeros to the next
// one, so no write ever rewrites a block that holds an acknowledged record.
//
// Integers are little-endian.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace vecwal::wal {

inline constexpr uint64_t kSegmentMagic = 0x47534c4157434556ull;  // bytes "VECWALSG"
inline constexpr uint32_t kFormatVersion = 1;
inline constexpr size_t kSegmentHeaderSize = 64;
inline constexpr size_t kHeaderCopyOffset = 2048;
inline constexpr size_t kMinBlockSize = 4096;
inline constexpr size_t kRecordHeaderSize = 40;
inline constexpr size_t kRecordAlign = 8;

enum class RecordType : uint8_t {
  kUpsert = 1,
  kDelete = 2,
  kBatch = 3,
  kCheckpointMarker = 4,
  kOpaque = 5,  // bytes the log carries without interpreting (tests, tools)
};
bool IsKnownRecordType(uint8_t t);
const char* ToString(RecordType t);

struct SegmentHeader {
  uint64_t segment_id = 0;
  uint64_t epoch = 0;      // random per activation: keys every record CRC
  uint64_t first_lsn = 0;  // LSN of the segment's first record
  uint64_t segment_bytes = 0;
  uint32_t block_size = 0;
  uint64_t created_unix_ns = 0;
};

// Writes a header into a 64-byte area.
void EncodeSegmentHeader(const SegmentHeader& h, std::byte* dst);
// Parses one 64-byte copy; nullopt when its magic, version or CRC is wrong.
std::optional<SegmentHeader> DecodeSegmentHeader(const std::byte* src);

// Record header layout (40 bytes):
//   0  u32 crc       CRC32C of payload, then header bytes [4,40), then the
//                    segment epoch (8 bytes): bytes from another segment or an
//                    earlier use of a recycled file never verify.
//   4  u32 length    payload bytes
//   8  u64 lsn
//  16  u64 acked     every LSN <= acked was durable when this record's flush
//                    was built: lets recovery tell a torn tail from damage
//  24  u64 segment_id
//  32  u8  type      RecordType
//  33  7 bytes zero
struct RecordHeader {
  uint32_t crc = 0;
  uint32_t length = 0;
  uint64_t lsn = 0;
  uint64_t acked = 0;
  uint64_t segment_id = 0;
  uint8_t type = 0;
};

void EncodeRecordHeader(const RecordHeader& h, std::byte* dst);
RecordHeader DecodeRecordHeader(const std::byte* src);
// The CRC a record must carry; `payload_crc` is crc32c::Value(payload).
uint32_t RecordCrc(uint32_t payload_crc, const std::byte* header, uint64_t epoch);
// True when the 40 bytes at src are all zero (padding or unwritten space).
bool IsZeroHeader(const std::byte* src);
// Bytes a record occupies in a segment, header and alignment included.
inline constexpr uint64_t RecordFootprint(uint64_t payload_len) {
  return (kRecordHeaderSize + payload_len + kRecordAlign - 1) / kRecordAlign * kRecordAlign;
}

// A random nonzero epoch for a newly activated segment.
uint64_t NewSegmentEpoch();

// "<prefix><n as 16 lowercase hex digits><suffix>", and back: the naming of
// every numbered file vecwal writes (segments, checkpoints).
std::string NumberedFileName(std::string_view prefix, uint64_t n, std::string_view suffix);
std::optional<uint64_t> ParseNumberedFileName(const std::string& name, std::string_view prefix,
                                              std::string_view suffix);

std::string SegmentFileName(uint64_t segment_id);
// The id in a segment file name, or nullopt for any other name.
std::optional<uint64_t> ParseSegmentFileName(const std::string& name);

}  // namespace vecwal::wal
