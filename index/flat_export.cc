#include "index/flat_export.h"

#include <algorithm>
#include <cstring>
#include <string>

namespace vecwal::index {

Result<size_t> FlatExport::Next(std::span<std::byte> room) {
  size_t n = 0;
  auto take = [&](const std::vector<std::byte>& from, size_t& pos) {
    const size_t k = std::min(from.size() - pos, room.size() - n);
    std::memcpy(room.data() + n, from.data() + pos, k);
    pos += k;
    n += k;
  };
  while (n < room.size()) {
    if (head_pos_ < head_.size()) {
      take(head_, head_pos_);
    } else if (cursor_ < rows_ * code_size_) {
      VECWAL_RETURN_IF_ERROR(NextCodes(room, n));
    } else if (tail_pos_ < tail_.size()) {
      take(tail_, tail_pos_);
    } else if (table_pos_ < table_.size()) {
      take(table_, table_pos_);
    } else if (table_row_ <= slots_.size()) {
      table_.clear();
      table_pos_ = 0;
      VECWAL_RETURN_IF_ERROR(NextTable(table_, kTablePieceBytes));
    } else {
      break;
    }
  }
  return n;
}

Status FlatExport::NextCodes(std::span<std::byte> room, size_t& n) {
  const size_t end = std::min(rows_ * code_size_, cursor_ + (room.size() - n));
  const auto* live = reinterpret_cast<const std::byte*>(flat_.codes.data());
  while (cursor_ < end) {
    const size_t row = cursor_ / code_size_;
    const size_t row_end = std::min(end, (row + 1) * code_size_);
    if (auto it = kept_.find(row); it != kept_.end()) {
      std::memcpy(room.data() + n, it->second.data() + (cursor_ - row * code_size_), row_end - cursor_);
      n += row_end - cursor_;
      cursor_ = row_end;
      if (cursor_ == (row + 1) * code_size_) kept_.erase(it);
      continue;
    }
    size_t next = row + 1;  // unchanged rows, copied in one piece
    while (next * code_size_ < end && !kept_.count(next)) ++next;
    const size_t run_end = std::min(end, next * code_size_);
    if (run_end > flat_.codes.size())
      return Status::Corruption("index export: row " + std::to_string((run_end - 1) / code_size_) +
                                " left the index without being kept (a bug; no checkpoint is written)");
    std::memcpy(room.data() + n, live + cursor_, run_end - cursor_);
    n += run_end - cursor_;
    cursor_ = run_end;
  }
  return Status::OK();
}

Status FlatExport::NextTable(std::vector<std::byte>& out, size_t limit) {
  auto put = [&](uint64_t v) {
    const auto* b = reinterpret_cast<const std::byte*>(&v);
    out.insert(out.end(), b, b + sizeof v);
  };
  if (table_row_ == 0 && !table_started_) {
    table_started_ = true;
    put(kTableMagic);
    put(next_slot_);
    put(slots_.size());
  }
  for (; table_row_ < slots_.size() && out.size() < limit; ++table_row_) {
    const auto slot = static_cast<uint64_t>(slots_[table_row_]);
    auto it = id_of_.find(slot);
    uint64_t id = 0;
    if (it != id_of_.end()) {
      id = it->second;
    } else if (auto k = kept_ids_.find(slot); k != kept_ids_.end()) {
      id = k->second;
    } else {
      return Status::Corruption("index export: slot " + std::to_string(slot) +
                                " left the table without being kept (a bug; no checkpoint is written)");
    }
    put(slot);
    put(id);
  }
  if (table_row_ == slots_.size() && out.size() < limit) {
    put(0);  // dead slots
    ++table_row_;
  }
  return Status::OK();
}

}  // namespace vecwal::index
