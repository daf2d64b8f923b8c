#include "recovery/replay_window.h"

#include <cstring>

namespace vecwal::recovery {

Status ReplayWindow::Apply(wal::Op&& op, uint64_t lsn) {
  if (auto* u = std::get_if<wal::UpsertOp>(&op)) {
    VECWAL_RETURN_IF_ERROR(Upsert(*u, lsn));
  } else if (auto* d = std::get_if<wal::DeleteOp>(&op)) {
    Delete(d->id);
  } else if (auto* b = std::get_if<wal::BatchOp>(&op)) {
    for (auto& sub : b->ops) {  // a batch is one record: it is here whole or not at all
      if (auto* su = std::get_if<wal::UpsertOp>(&sub)) VECWAL_RETURN_IF_ERROR(Upsert(*su, lsn));
      else Delete(std::get<wal::DeleteOp>(sub).id);
    }
  }
  return ids_.size() >= limit_ ? Flush() : Status::OK();
}

Status ReplayWindow::Upsert(wal::UpsertOp& u, uint64_t lsn) {
  if (u.vector.size() != dim_)
    return Status::Corruption("record LSN " + std::to_string(lsn) + ": upsert of id " + std::to_string(u.id) +
                              " has dimension " + std::to_string(u.vector.size()) + ", the index " +
                              std::to_string(dim_));
  if (u.payload.empty()) payloads_.erase(u.id);
  else payloads_[u.id] = std::move(u.payload);
  if (auto it = row_.find(u.id); it != row_.end()) {
    std::memcpy(vecs_.data() + it->second * dim_, u.vector.data(), dim_ * sizeof(float));
    return Status::OK();
  }
  row_.emplace(u.id, ids_.size());
  ids_.push_back(u.id);
  vecs_.insert(vecs_.end(), u.vector.begin(), u.vector.end());
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
  ids_.clear();
  vecs_.clear();
  row_.clear();
  touched_.clear();
  return s;
}

}  // namespace vecwal::recovery
