// ForwardingIndex: a VectorIndex that passes every call to the one it
// wraps, for tests that watch or change a few of them.
#pragma once

#include <memory>
#include <utility>

#include "index/vector_index.h"

namespace vecwal::test {

class ForwardingIndex : public index::VectorIndex {
 public:
  explicit ForwardingIndex(std::unique_ptr<index::VectorIndex> inner) : inner_(std::move(inner)) {}

  const index::IndexSpec& spec() const override { return inner_->spec(); }
  bool is_trained() const override { return inner_->is_trained(); }
  Status Train(std::span<const float> s) override { return inner_->Train(s); }
  Status Add(std::span<const uint64_t> ids, std::span<const float> v) override { return inner_->Add(ids, v); }
  Status AddRows(std::span<const uint64_t> ids, std::span<const std::byte* const> rows) override {
    return inner_->AddRows(ids, rows);
  }
  Status Remove(std::span<const uint64_t> ids) override { return inner_->Remove(ids); }
  using VectorIndex::Search;
  Result<index::SearchResults> Search(std::span<const float> q, size_t k, const index::IdSet* skip,
                                      const index::SearchParams& p) const override {
    return inner_->Search(q, k, skip, p);
  }
  Status CheckSearchParams(const index::SearchParams& p) const override { return inner_->CheckSearchParams(p); }
  size_t SearchBatchFloor() const override { return inner_->SearchBatchFloor(); }
  std::string SearchedOn() const override { return inner_->SearchedOn(); }
  bool Contains(uint64_t id) const override { return inner_->Contains(id); }
  Result<std::vector<float>> Reconstruct(uint64_t id) const override { return inner_->Reconstruct(id); }
  size_t size() const override { return inner_->size(); }
  size_t tombstones() const override { return inner_->tombstones(); }
  size_t capacity() const override { return inner_->capacity(); }
  void Reserve(size_t n) override { inner_->Reserve(n); }
  std::unique_ptr<index::IndexRoom> PrepareRoom(size_t more) const override { return inner_->PrepareRoom(more); }
  void TakeRoom(index::IndexRoom& room) override { inner_->TakeRoom(room); }
  Result<std::unique_ptr<index::IndexCompaction>> BeginCompaction() override { return inner_->BeginCompaction(); }
  Status FinishCompaction(std::unique_ptr<index::IndexCompaction> c) override {
    return inner_->FinishCompaction(std::move(c));
  }
  Status Serialize(const index::ByteSink& sink) const override { return inner_->Serialize(sink); }
  Result<std::unique_ptr<index::IndexExport>> BeginExport() override { return inner_->BeginExport(); }
  Status ScanLive(size_t rows_per_piece, const LiveVisitor& visit) const override {
    return inner_->ScanLive(rows_per_piece, visit);
  }

 protected:
  std::unique_ptr<index::VectorIndex> inner_;
};

}  // namespace vecwal::test
