#include "recovery/replay_window.h"

#include <algorithm>
#include <chrono>
#include <cstring>

namespace vecwal::recovery {

ReplayWindow::ReplayWindow(index::VectorIndex& idx, PayloadStore& payloads, size_t rows_per_flush)
    : idx_(idx),
      payloads_(payloads),
      dim_(idx.spec().dim),
      limit_(rows_per_flush ? rows_per_flush : std::max<size_t>(1024, kWindowBytes / (dim_ * sizeof(float)))) {
  for (auto& w : windows_) {
    w.ids.reserve(limit_);
    w.rows.reserve(limit_);
    w.copies.reserve(limit_ * dim_);  // address space; pages only as copies fill them
    w.row.reserve(limit_);
    w.kept.reserve(kMaxKept);
  }
}

ReplayWindow::~ReplayWindow() { (void)Wait(); }

Status ReplayWindow::Apply(std::span<const wal::OpView> ops, uint64_t lsn, const std::shared_ptr<const void>& keep) {
  // A batch is one record: it is here whole or not at all.
  for (const auto& op : ops) {
    if (op.is_delete) Delete(op.id);
    else VECWAL_RETURN_IF_ERROR(Upsert(op, lsn, keep));
    Window& w = windows_[open_];  // an upsert may have handed the last one on
    if (w.first_lsn == 0) w.first_lsn = lsn;
    w.last_lsn = lsn;
  }
  return windows_[open_].full(limit_) ? Hand() : Status::OK();
}

// Where the window reads the vector from: the log's own buffer, kept, or a
// copy of it.
const std::byte* ReplayWindow::Place(Window& w, const wal::OpView& u, const std::shared_ptr<const void>& keep) {
  if (keep) {
    if (w.kept.empty() || w.kept.back() != keep) w.kept.push_back(keep);
    return u.vector.data();
  }
  const size_t at = w.copies.size();  // within capacity: see Upsert
  w.copies.resize(at + dim_);
  std::memcpy(w.copies.data() + at, u.vector.data(), u.vector.size());
  return reinterpret_cast<const std::byte*>(w.copies.data() + at);
}

Status ReplayWindow::Upsert(const wal::OpView& u, uint64_t lsn, const std::shared_ptr<const void>& keep) {
  if (u.dim != dim_)
    return Status::Corruption("record LSN " + std::to_string(lsn) + ": upsert of id " + std::to_string(u.id) +
                              " has dimension " + std::to_string(u.dim) + ", the index " + std::to_string(dim_));
  payloads_.Set(u.id, u.payload);
  // Rows point into the copies, so they never grow: a window whose copies
  // are full is handed on, even in the middle of a batch (the index still
  // gets the ops in log order, and an error ends the whole replay).
  if (!keep && windows_[open_].copies.size() + dim_ > windows_[open_].copies.capacity())
    VECWAL_RETURN_IF_ERROR(Hand());
  Window& w = windows_[open_];
  const std::byte* v = Place(w, u, keep);
  if (auto it = w.row.find(u.id); it != w.row.end()) {
    w.rows[it->second] = v;
    return Status::OK();
  }
  w.row.emplace(u.id, w.ids.size());
  w.ids.push_back(u.id);
  w.rows.push_back(v);
  w.touched.push_back(u.id);
  return Status::OK();
}

void ReplayWindow::Delete(uint64_t id) {
  payloads_.Erase(id);
  Window& w = windows_[open_];
  if (auto it = w.row.find(id); it != w.row.end()) {
    w.ids[it->second] = index::kNoId;
    w.row.erase(it);
    return;  // already in touched
  }
  w.touched.push_back(id);
}

Status ReplayWindow::Wait() { return applying_.valid() ? applying_.get() : Status::OK(); }

// Invariant: at most one window is being applied, and it is not the open one.
Status ReplayWindow::Hand() {
  VECWAL_RETURN_IF_ERROR(Wait());  // the other window is free again, and the index has every earlier op
  Window& w = windows_[open_];
  if (w.ids.empty() && w.touched.empty()) return Status::OK();
  applying_ = std::async(std::launch::async, [this, &w] { return ApplyToIndex(w); });
  open_ ^= 1;
  return Status::OK();
}

Status ReplayWindow::Flush() {
  VECWAL_RETURN_IF_ERROR(Hand());
  return Wait();
}

Status ReplayWindow::ApplyToIndex(Window& w) {
  const auto t0 = std::chrono::steady_clock::now();
  Status s = idx_.Remove(w.touched);
  size_t live = 0;  // pack the surviving rows to the front
  for (size_t r = 0; r < w.ids.size(); ++r) {
    if (w.ids[r] == index::kNoId) continue;
    w.ids[live] = w.ids[r];
    w.rows[live] = w.rows[r];
    ++live;
  }
  if (s.ok() && live) s = idx_.AddRows(std::span(w.ids).first(live), std::span(w.rows).first(live));
  w.ids.clear();
  w.rows.clear();
  w.copies.clear();  // keeps its memory for the window's next fill
  w.kept.clear();    // the log's buffers go back to its reader
  w.row.clear();
  w.touched.clear();
  apply_busy_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // The index refused ops that are durable: the reopen fails, and says which
  // records to look at (vecwal-inspect dump --from).
  if (!s.ok())
    s = s.WithContext("applying the ops of records LSN " + std::to_string(w.first_lsn) + " to " +
                      std::to_string(w.last_lsn) + " to the index");
  w.first_lsn = w.last_lsn = 0;
  return s;
}

}  // namespace vecwal::recovery
