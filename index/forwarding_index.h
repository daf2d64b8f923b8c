// ForwardingIndex: a VectorIndex that passes every call to the one it
// wraps. The base for an index that changes a few of them around another
// (DurableIndexOptions::wrap_index: gpu/'s mirror, tests that watch calls).
#pragma once

#include <memory>
#include <utility>

#include "index/vector_index.h"

namespace vecwal::index {

class ForwardingIndex : public VectorIndex {
 public:
  explicit ForwardingIndex(std::unique_ptr<VectorIndex> inner) : inner_(std::move(inner)) {}

  const IndexSpec& spec() const override { return inner_->spec(); }
  bool is_trained() const override { return inner_->is_trained(); }
  Status Train(std::span<const float> s) override { return inner_->Train(s); }
  Status Add(std::span<const uint64_t> ids, std::span<const float> v) override { return inner_->Add(ids, v); }
  Status AddRows(std::span<const uint64_t> ids, std::span<const std::byte* const> rows) override {
    return inner_->AddRows(ids, rows);
  }
  Status Remove(std::span<const uint64_t> ids) override { return inner_->Remove(ids); }
  using VectorIndex::Search;
  Result<SearchResults> Search(std::span<const float> q, size_t k, const IdSet* skip,
                                      const SearchParams& p) const override {
    return inner_->Search(q, k, skip, p);
  }
  Status CheckSearchParams(const SearchParams& p) const override { return inner_->CheckSearchParams(p); }
  size_t SearchBatchFloor() const override { return inner_->SearchBatchFloor(); }
  std::string SearchedOn() const override { return inner_->SearchedOn(); }
  bool Contains(uint64_t id) const override { return inner_->Contains(id); }
  Result<std::vector<float>> Reconstruct(uint64_t id) const override { return inner_->Reconstruct(id); }
  size_t size() const override { return inner_->size(); }
  size_t tombstones() const override { return inner_->tombstones(); }
  size_t capacity() const override { return inner_->capacity(); }
  void Reserve(size_t n) override { inner_->Reserve(n); }
  std::unique_ptr<IndexRoom> PrepareRoom(size_t more) const override { return inner_->PrepareRoom(more); }
  void TakeRoom(IndexRoom& room) override { inner_->TakeRoom(room); }
  bool BeginGrowth(size_t min_bytes) override { return inner_->BeginGrowth(min_bytes); }
  bool GrowStep(size_t bytes) override { return inner_->GrowStep(bytes); }
  std::unique_ptr<IndexRoom> TakeGrowth() override { return inner_->TakeGrowth(); }
  Result<std::unique_ptr<IndexCompaction>> BeginCompaction() override { return inner_->BeginCompaction(); }
  Status FinishCompaction(std::unique_ptr<IndexCompaction> c) override {
    return inner_->FinishCompaction(std::move(c));
  }
  Status Serialize(const ByteSink& sink) const override { return inner_->Serialize(sink); }
  Result<std::unique_ptr<IndexExport>> BeginExport() override { return inner_->BeginExport(); }
  Status ScanLive(size_t rows_per_piece, const LiveVisitor& visit) const override {
    return inner_->ScanLive(rows_per_piece, visit);
  }

 protected:
  std::unique_ptr<VectorIndex> inner_;
};

}  // namespace vecwal::index
