// FlatExport: a checkpoint's export of a flat index (IndexIDMap2 over flat
// codes) read from the live index as the export goes, beside its writes.
// Only index/ includes this.
#pragma once

#include <faiss/IndexFlatCodes.h>
#include <faiss/impl/io.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

#include "index/faiss_parts.h"

namespace vecwal::index {

// The export of an IndexIDMap2 over flat codes. Its bytes are FAISS's own
// serialization, taken at the start with the codes left out (`head_`, then
// the codes, then `tail_`: the id map and our slot table); the codes are
// read from the live index as the export goes, except rows that changed
// since its start, which Preserve kept. Only a removal changes or drops a row
// below the start's row count (it moves the last row into the hole); adds
// write past the end, where every row the export still needs was kept when
// the removal that freed it dropped it.
//
// The codes are copied once, from the index into the caller's room (a
// checkpoint's staging buffer), not into a piece of our own and then again
// into the stage (perf had put 65% of one slow 3 GB checkpoint's samples in
// those two copies; on this VM's quiet minutes the one left is 8%; the
// checkpoint's wall time moved within the noise). The room's end falls
// anywhere, inside a row too, so the cursor counts bytes; a row the cursor
// is inside when it changes is kept whole, and the rest of it comes from
// the kept bytes, which are the ones the first part was copied from.
class FlatExport final : public IndexExport {
 public:
  // `slots`: FAISS's id map (row -> slot) now; `id_of`: the live table, read
  // as the export goes; `next_slot`: the table's next slot now.
  FlatExport(const faiss::IndexFlatCodes& flat, FlatExport** registration, std::vector<faiss::Index::idx_t> slots,
             const IdTable& id_of, uint64_t next_slot)
      : flat_(flat),
        registration_(registration),
        rows_(static_cast<size_t>(flat.ntotal)),
        code_size_(flat.code_size),
        slots_(std::move(slots)),
        id_of_(id_of),
        next_slot_(next_slot) {
    *registration_ = this;
  }
  ~FlatExport() override { *registration_ = nullptr; }

  std::vector<std::byte>& head() { return head_; }
  std::vector<std::byte>& tail() { return tail_; }

  // The id of `slot` is about to leave the table.
  void PreserveId(uint64_t slot, uint64_t id) {
    if (slot < next_slot_) kept_ids_.emplace(slot, id);
  }

  // Row `row` is about to change or go.
  void Preserve(size_t row) {
    if ((row + 1) * code_size_ <= cursor_ || row >= rows_ || kept_.count(row)) return;
    const auto* p = reinterpret_cast<const std::byte*>(flat_.codes.data()) + row * code_size_;
    kept_.emplace(row, std::vector<std::byte>(p, p + code_size_));
  }

  Result<size_t> Next(std::span<std::byte> room) override;

 private:
  static constexpr size_t kTablePieceBytes = 64 << 10;

  // Copies codes from the cursor into room[n, room.size()).
  Status NextCodes(std::span<std::byte> room, size_t& n);

  // The slot table as FaissIndex::WriteTable writes it: magic, next slot,
  // live count, (slot, id) in row order, no dead slots (a flat index removes).
  // Row `slots_.size()` stands for the closing dead count.
  Status NextTable(std::vector<std::byte>& out, size_t limit);

  const faiss::IndexFlatCodes& flat_;
  FlatExport** const registration_;
  const size_t rows_, code_size_;
  std::vector<std::byte> head_, tail_;
  size_t head_pos_ = 0, tail_pos_ = 0;
  size_t cursor_ = 0;  // bytes of the codes written
  std::unordered_map<size_t, std::vector<std::byte>> kept_;
  const std::vector<faiss::Index::idx_t> slots_;
  const IdTable& id_of_;
  const uint64_t next_slot_;
  IdTable kept_ids_;
  std::vector<std::byte> table_;  // the slot table's next piece
  size_t table_pos_ = 0;
  size_t table_row_ = 0;
  bool table_started_ = false;
};

// Copies FAISS's serialization except one write: the flat codes.
struct SplitWriter : faiss::IOWriter {
  SplitWriter(const void* codes, size_t codes_bytes, FlatExport& e) : codes(codes), codes_bytes(codes_bytes), ex(e) {
    name = "vecwal export";
  }
  size_t operator()(const void* p, size_t size, size_t n) override {
    if (!seen && codes_bytes > 0 && p == codes && size * n == codes_bytes) {
      seen = true;
      return n;
    }
    const auto* b = static_cast<const std::byte*>(p);
    auto& to = seen || codes_bytes == 0 ? ex.tail() : ex.head();
    to.insert(to.end(), b, b + size * n);
    return n;
  }
  const void* codes;
  size_t codes_bytes;
  FlatExport& ex;
  bool seen = false;
};

}  // namespace vecwal::index
