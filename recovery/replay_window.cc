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
    w.vecs.reserve(limit_ * dim_);  // grown (and zeroed) once, by the window's first fill
  }
}

ReplayWindow::~ReplayWindow() { (void)Wait(); }

Status ReplayWindow::Apply(std::span<const wal::OpView> ops, uint64_t lsn) {
  // A batch is one record: it is here whole or not at all.
  for (const auto& op : ops) {
    if (op.is_delete) Delete(op.id);
    else VECWAL_RETURN_IF_ERROR(Upsert(op, lsn));
  }
  return windows_[open_].ids.size() >= limit_ ? Hand() : Status::OK();
}

// Copies the vector straight from the log's bytes into the window.
Status ReplayWindow::Upsert(const wal::OpView& u, uint64_t lsn) {
  if (u.dim != dim_)
    return Status::Corruption("record LSN " + std::to_string(lsn) + ": upsert of id " + std::to_string(u.id) +
                              " has dimension " + std::to_string(u.dim) + ", the index " + std::to_string(dim_));
  payloads_.Set(u.id, u.payload);
  Window& w = windows_[open_];
  if (auto it = w.row.find(u.id); it != w.row.end()) {
    std::memcpy(w.vecs.data() + it->second * dim_, u.vector.data(), u.vector.size());
    return Status::OK();
  }
  const size_t row = w.ids.size();
  // Rows are zeroed once, as the window first grows; later fills reuse them.
  // Past the window's limit only a batch record bigger than it grows them.
  if (const size_t need = (row + 1) * dim_; need > w.vecs.size())
    w.vecs.resize(std::max(need, std::min(w.vecs.size() * 2, limit_ * dim_)));
  w.row.emplace(u.id, row);
  w.ids.push_back(u.id);
  std::memcpy(w.vecs.data() + row * dim_, u.vector.data(), u.vector.size());
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
    if (live != r) {
      w.ids[live] = w.ids[r];
      std::memmove(w.vecs.data() + live * dim_, w.vecs.data() + r * dim_, dim_ * sizeof(float));
    }
    ++live;
  }
  if (s.ok() && live) s = idx_.Add(std::span(w.ids).first(live), std::span(w.vecs).first(live * dim_));
  w.ids.clear();  // vecs keeps its rows' memory for the window's next fill
  w.row.clear();
  w.touched.clear();
  apply_busy_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return s;
}

}  // namespace vecwal::recovery
