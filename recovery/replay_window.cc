#include "recovery/replay_window.h"

#include <algorithm>
#include <cstring>

namespace vecwal::recovery {

Status ReplayWindow::Apply(std::span<const wal::OpView> ops, uint64_t lsn) {
  // A batch is one record: it is here whole or not at all.
  for (const auto& op : ops) {
    if (op.is_delete) Delete(op.id);
    else VECWAL_RETURN_IF_ERROR(Upsert(op, lsn));
  }
  return ids_.size() >= limit_ ? Flush() : Status::OK();
}

// Copies the vector straight from the log's bytes into the window.
Status ReplayWindow::Upsert(const wal::OpView& u, uint64_t lsn) {
  if (u.dim != dim_)
    return Status::Corruption("record LSN " + std::to_string(lsn) + ": upsert of id " + std::to_string(u.id) +
                              " has dimension " + std::to_string(u.dim) + ", the index " + std::to_string(dim_));
  if (u.payload.empty()) payloads_.erase(u.id);
  else payloads_[u.id].assign(u.payload.begin(), u.payload.end());
  if (auto it = row_.find(u.id); it != row_.end()) {
    std::memcpy(vecs_.data() + it->second * dim_, u.vector.data(), u.vector.size());
    return Status::OK();
  }
  const size_t row = ids_.size();
  // Rows are zeroed once, as the first window grows; later windows reuse them.
  // Past the window's limit only a batch record bigger than it grows them.
  if (const size_t need = (row + 1) * dim_; need > vecs_.size())
    vecs_.resize(std::max(need, std::min(vecs_.size() * 2, limit_ * dim_)));
  row_.emplace(u.id, row);
  ids_.push_back(u.id);
  std::memcpy(vecs_.data() + row * dim_, u.vector.data(), u.vector.size());
  touched_.push_back(u.id);
  return Status::OK();
}

void ReplayWindow::Delete(uint64_t id) {
  payloads_.erase(id);
  if (auto it = row_.find(id); it != row_.end()) {
    ids_[it->second] = index::kNoId;
    row_.erase(it);
    return;  // already in touched_
  }
  touched_.push_back(id);
}

Status ReplayWindow::Flush() {
  VECWAL_RETURN_IF_ERROR(idx_.Remove(touched_));
  size_t live = 0;  // pack the surviving rows to the front
  for (size_t r = 0; r < ids_.size(); ++r) {
    if (ids_[r] == index::kNoId) continue;
    if (live != r) {
      ids_[live] = ids_[r];
      std::memmove(vecs_.data() + live * dim_, vecs_.data() + r * dim_, dim_ * sizeof(float));
    }
    ++live;
  }
  Status s = live ? idx_.Add(std::span(ids_).first(live), std::span(vecs_).first(live * dim_)) : Status::OK();
  ids_.clear();  // vecs_ keeps its rows' memory for the next window
  row_.clear();
  touched_.clear();
  return s;
}

}  // namespace vecwal::recovery
