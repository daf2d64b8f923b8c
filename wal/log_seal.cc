#include "wal/log_seal.h"

#include <chrono>
#include <cstring>
#include <optional>

#include "io/aligned_buffer.h"
#include "io/crc32c.h"
#include "io/little_endian.h"

namespace vecwal::wal {
namespace {

constexpr uint64_t kSealMagic = 0x31304c4145535756ull;  // bytes "VWSEAL01"
constexpr uint32_t kSealVersion = 1;
constexpr size_t kSlotBytes = 4096;  // one direct-I/O block each
constexpr size_t kCrcOffset = 40;    // the CRC covers [0, 40)

struct Slot {
  uint64_t seq = 0;
  uint64_t lsn = 0;
};

// Layout of a slot: u64 magic, u32 version, u32 slot index, u64 seq,
// u64 sealed LSN, u64 unix ns written, u32 CRC32C of bytes [0, 40), zeros.
std::optional<Slot> DecodeSlot(const std::byte* p, uint32_t index) {
  if (GetLE<uint64_t>(p, 0) != kSealMagic || GetLE<uint32_t>(p, 8) != kSealVersion || GetLE<uint32_t>(p, 12) != index ||
      GetLE<uint32_t>(p, kCrcOffset) != crc32c::Value(p, kCrcOffset))
    return std::nullopt;
  return Slot{GetLE<uint64_t>(p, 16), GetLE<uint64_t>(p, 24)};
}

}  // namespace

Result<std::unique_ptr<LogSeal>> LogSeal::Open(FileSystem& fs, const std::string& dir) {
  std::unique_ptr<LogSeal> seal(new LogSeal(fs, dir));
  auto opened = fs.Open(seal->path(), FileOpenOptions{});
  if (opened.status().IsNotFound()) return seal;
  VECWAL_ASSIGN_OR_RETURN(auto file, std::move(opened));
  VECWAL_ASSIGN_OR_RETURN(uint64_t size, file->Size());
  std::vector<std::byte> bytes;
  if (size >= 2 * kSlotBytes) {
    VECWAL_ASSIGN_OR_RETURN(bytes, ReadRange(*file, 0, 2 * kSlotBytes));
  }
  std::optional<Slot> best;
  for (uint32_t i = 0; i < 2 && !bytes.empty(); ++i)
    if (auto s = DecodeSlot(bytes.data() + i * kSlotBytes, i); s && (!best || s->seq > best->seq)) best = s;
  if (!best) {
    seal->note_ = seal->path() + ": neither slot verifies; the newest records are judged without it";
    return seal;
  }
  seal->sealed_lsn_ = best->lsn;
  seal->next_seq_ = best->seq + 1;
  return seal;
}

Status LogSeal::Seal(uint64_t lsn) {
  bool created = false;
  if (!file_) {
    FileOpenOptions o;
    o.writable = true;
    auto opened = fs_.Open(path(), o);
    if (opened.status().IsNotFound()) {
      o.create = true;
      o.zero_fill_bytes = 2 * kSlotBytes;
      opened = fs_.Open(path(), o);
      created = true;
    }
    VECWAL_ASSIGN_OR_RETURN(file_, std::move(opened));
  }
  const uint32_t index = static_cast<uint32_t>(next_seq_ % 2);
  AlignedBuffer block(kSlotBytes, std::max<size_t>(4096, file_->alignment()));
  std::byte* p = block.data();
  std::memset(p, 0, kSlotBytes);
  PutLE(p, 0, kSealMagic);
  PutLE(p, 8, kSealVersion);
  PutLE(p, 12, index);
  PutLE(p, 16, next_seq_);
  PutLE(p, 24, lsn);
  PutLE(p, 32, static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                       std::chrono::system_clock::now().time_since_epoch())
                                       .count()));
  PutLE(p, kCrcOffset, crc32c::Value(p, kCrcOffset));
  VECWAL_RETURN_IF_ERROR(file_->WriteAt(index * kSlotBytes, block.span()));
  VECWAL_RETURN_IF_ERROR(file_->Sync());
  if (created) VECWAL_RETURN_IF_ERROR(fs_.SyncDir(dir_));
  sealed_lsn_ = lsn;
  ++next_seq_;
  return Status::OK();
}

}  // namespace vecwal::wal
