#include "gpu/mirrored_index.h"

#include <limits>
#include <utility>
#include <vector>

#include "gpu/device.h"
#include "gpu/flat_store.h"
#include "index/forwarding_index.h"
#include "index/id_table.h"

namespace vecwal::gpu {
namespace {

constexpr size_t kUploadPieceRows = 1 << 16;

// The host FAISS index is the one it forwards to (inner_): every call but
// the adds, removes and searches, which the card's copy follows or answers.
// - Reserve is the host's alone: a replay reserves for every log byte being
//   a new vector, which costs the host address space and the card real
//   memory. The card's storage doubles as adds need it (a copy on the card).
// - A flat index removes what it is asked to and keeps no tombstones: a
//   compaction, if the host had one, would change no live vector.
class MirroredIndex final : public index::ForwardingIndex {
 public:
  using ForwardingIndex::ForwardingIndex;

  void Attach(std::unique_ptr<RowStore> dev, std::string card) {
    dev_ = std::move(dev);
    card_ = std::move(card);
  }

  // Copies the host's vectors to the card, with the table of which id each
  // device row holds.
  Status Upload() {
    VECWAL_RETURN_IF_ERROR(dev_->Reserve(inner_->size()));
    id_of_row_.reserve(inner_->size());
    row_of_.reserve(inner_->size());
    return inner_->ScanLive(kUploadPieceRows, [&](std::span<const uint64_t> ids, std::span<const float> v) {
      VECWAL_RETURN_IF_ERROR(dev_->Append(v.data(), ids.size()));
      Took(ids);
      return Status::OK();
    });
  }

  Status device_status() const { return device_status_; }
  void FailNextChange(Status why) { injected_ = std::move(why); }

  // The host index first: it checks the ids and changes nothing where it
  // refuses them.
  Status Add(std::span<const uint64_t> ids, std::span<const float> vectors) override {
    VECWAL_RETURN_IF_ERROR(inner_->Add(ids, vectors));
    if (dev_) Mirrored(ids, Injected() ? std::exchange(injected_, {}) : dev_->Append(vectors.data(), ids.size()));
    return Status::OK();
  }
  Status AddRows(std::span<const uint64_t> ids, std::span<const std::byte* const> rows) override {
    VECWAL_RETURN_IF_ERROR(inner_->AddRows(ids, rows));
    if (dev_) Mirrored(ids, Injected() ? std::exchange(injected_, {}) : dev_->AppendGathered(rows.data(), rows.size()));
    return Status::OK();
  }

  // The card's rows stay dense: the rows past the new end that stay fill
  // the holes below it, in one batch of moves (one call to the card, not one
  // a removed id: a replay's deletes come in thousands).
  Status Remove(std::span<const uint64_t> ids) override {
    VECWAL_RETURN_IF_ERROR(inner_->Remove(ids));
    if (!dev_) return Status::OK();
    if (Injected()) return Drop(std::exchange(injected_, {}));
    std::vector<size_t> gone;
    for (uint64_t id : ids) {
      if (auto it = row_of_.find(id); it != row_of_.end()) {  // a repeated id is found once
        gone.push_back(it->second);
        row_of_.erase(it);
      }
    }
    if (gone.empty()) return Status::OK();
    const size_t end = id_of_row_.size() - gone.size();
    std::vector<bool> tail_gone(gone.size());  // rows end.. that go
    std::vector<RowMove> moves;
    for (size_t row : gone) {
      if (row >= end) {
        tail_gone[row - end] = true;
      } else {
        moves.push_back({0, row});
      }
    }
    size_t from = end;
    for (RowMove& m : moves) {
      while (tail_gone[from - end]) ++from;
      m.from = from++;
      id_of_row_[m.to] = id_of_row_[m.from];
      row_of_[id_of_row_[m.to]] = m.to;
    }
    id_of_row_.resize(end);
    if (!moves.empty())
      if (Status s = dev_->MoveRows(moves.data(), moves.size()); !s.ok()) return Drop(s);
    if (Status s = dev_->Truncate(end); !s.ok()) return Drop(s);
    return Status::OK();
  }

  using VectorIndex::Search;
  Result<index::SearchResults> Search(std::span<const float> queries, size_t k, const index::IdSet* skip,
                                      const index::SearchParams& params) const override {
    const uint32_t dim = spec().dim;
    if (!dev_ || k > dev_->max_k()) return inner_->Search(queries, k, skip, params);
    if (queries.size() % dim != 0)
      return Status::InvalidArgument("queries: " + std::to_string(queries.size()) +
                                     " floats are not whole vectors of dimension " + std::to_string(dim));
    const size_t nq = queries.size() / dim;
    VECWAL_RETURN_IF_ERROR(index::CheckResultSize(nq, k));
    VECWAL_RETURN_IF_ERROR(inner_->CheckSearchParams(params));
    index::SearchResults r;
    r.nq = nq;
    r.k = k;
    r.ids.assign(nq * k, index::kNoId);
    r.distances.assign(nq * k, std::numeric_limits<float>::quiet_NaN());
    const std::vector<uint8_t> keep = Kept(params);
    const std::vector<uint64_t> skipped = Skipped(skip);
    const RowFilter which{keep.empty() ? nullptr : keep.data(), skipped.data(), skipped.size()};
    std::vector<int64_t> rows(nq * k);
    Status s = dev_->Search(queries.data(), nq, k, which, r.distances.data(), rows.data());
    // A card that fails a search (no memory for its scratch, say) leaves the
    // answer to the CPU index: slower, never wrong. Changing the index is
    // what drops the mirror, and a search holds it shared.
    if (!s.ok()) return inner_->Search(queries, k, skip, params);
    for (size_t i = 0; i < rows.size(); ++i)
      if (rows[i] >= 0) r.ids[i] = id_of_row_[static_cast<size_t>(rows[i])];
    return r;
  }

  // Every search call streams all the card's rows through one product per
  // 1024 queries: below a few dozen queries a call, that read is most of it.
  size_t SearchBatchFloor() const override { return dev_ ? 64 : inner_->SearchBatchFloor(); }
  std::string SearchedOn() const override {
    return dev_ ? card_ : inner_->SearchedOn() + " (" + device_status_.ToString() + ")";
  }
  // The card could not take the index, or a change to it: searches use the
  // host from now on. A change itself succeeded (the host holds it), so its
  // caller is told OK.
  Status Drop(const Status& why) {
    device_status_ = Status::Unavailable("GPU mirror of index '" + spec().description +
                                         "' dropped; searches run on the CPU index: " + why.ToString());
    dev_.reset();
    id_of_row_ = {};
    row_of_ = {};
    return Status::OK();
  }

 private:
  bool Injected() const { return !injected_.ok(); }
  void Took(std::span<const uint64_t> ids) {
    for (uint64_t id : ids) {
      row_of_[id] = id_of_row_.size();
      id_of_row_.push_back(id);
    }
  }
  // After the host took an add: the card's rows follow, or the mirror goes.
  void Mirrored(std::span<const uint64_t> ids, const Status& s) {
    if (s.ok()) {
      Took(ids);
    } else {
      (void)Drop(s);
    }
  }

  // A byte a device row, nonzero where a filter or id list lets the row
  // through; empty where there is neither.
  std::vector<uint8_t> Kept(const index::SearchParams& p) const {
    if (!p.filter && !p.ids) return {};
    std::vector<uint8_t> keep(id_of_row_.size(), p.ids ? 0 : 1);
    if (p.ids) {
      for (uint64_t id : *p.ids)
        if (auto it = row_of_.find(id); it != row_of_.end()) keep[it->second] = 1;
    }
    if (p.filter) {
      for (size_t r = 0; r < keep.size(); ++r)
        if (keep[r] != 0 && !p.filter(id_of_row_[r])) keep[r] = 0;
    }
    return keep;
  }

  // The device rows of the ids a search must not return (the store's recent
  // writes hide theirs): a few, where a mask would be a byte a row.
  std::vector<uint64_t> Skipped(const index::IdSet* skip) const {
    std::vector<uint64_t> rows;
    if (skip == nullptr) return rows;
    for (uint64_t id : *skip)
      if (auto it = row_of_.find(id); it != row_of_.end()) rows.push_back(it->second);
    return rows;
  }

  std::unique_ptr<RowStore> dev_;  // the card's copy (DeviceFlatStore); null once dropped
  std::string card_;              // "cuda:0 (NVIDIA H200, sm_90, 139 GiB)"
  Status device_status_;
  Status injected_;  // FailNextDeviceChange's error, until a change takes it
  std::vector<uint64_t> id_of_row_;
  index::IdMap<size_t> row_of_;
};

}  // namespace

namespace {

Status CheckFlat(const index::VectorIndex& host) {
  const auto& spec = host.spec();
  if (spec.description != "Flat")
    return Status::InvalidArgument("a GPU mirror takes a 'Flat' index; this one is '" + spec.description + "'");
  return Status::OK();
}

// The card and its copy of `m`'s vectors.
Status PutOnCard(MirroredIndex& m, int device) {
  const auto& spec = m.spec();
  VECWAL_ASSIGN_OR_RETURN(auto dev, DeviceFlatStore::Create(device, spec.dim, spec.metric == index::Metric::kInnerProduct));
  VECWAL_ASSIGN_OR_RETURN(auto described, DescribeDevice(device));
  m.Attach(std::move(dev), "cuda:" + std::to_string(device) + " (" + described + ")");
  return m.Upload();
}

Result<std::unique_ptr<index::VectorIndex>> Mirror(std::unique_ptr<index::VectorIndex> host, int device, IfNoCard if_none) {
  VECWAL_RETURN_IF_ERROR(CheckFlat(*host));
  auto m = std::make_unique<MirroredIndex>(std::move(host));
  if (Status s = PutOnCard(*m, device); !s.ok()) {
    if (if_none == IfNoCard::kFail) return s;
    (void)m->Drop(Status::Unavailable("CUDA device " + std::to_string(device) + " could not take the index: " + s.ToString()));
  }
  return std::unique_ptr<index::VectorIndex>(std::move(m));
}

}  // namespace

Result<std::unique_ptr<index::VectorIndex>> MirrorOn(std::unique_ptr<index::VectorIndex> host,
                                                     std::unique_ptr<RowStore> rows, std::string where) {
  VECWAL_RETURN_IF_ERROR(CheckFlat(*host));
  if (rows->dim() != host->spec().dim || rows->rows() != 0)
    return Status::InvalidArgument("a mirror's row store must be empty and of dimension " +
                                   std::to_string(host->spec().dim));
  auto m = std::make_unique<MirroredIndex>(std::move(host));
  m->Attach(std::move(rows), std::move(where));
  VECWAL_RETURN_IF_ERROR(m->Upload());
  return std::unique_ptr<index::VectorIndex>(std::move(m));
}

Result<std::unique_ptr<index::VectorIndex>> MirrorOnDevice(std::unique_ptr<index::VectorIndex> host, int device) {
  return Mirror(std::move(host), device, IfNoCard::kFail);
}

std::function<Result<std::unique_ptr<index::VectorIndex>>(std::unique_ptr<index::VectorIndex>)> OnDevice(
    int device, IfNoCard if_none) {
  return [device, if_none](std::unique_ptr<index::VectorIndex> host) { return Mirror(std::move(host), device, if_none); };
}

Status DeviceStatus(const index::VectorIndex& index) {
  const auto* m = dynamic_cast<const MirroredIndex*>(&index);
  if (m == nullptr) return Status::InvalidArgument("index '" + index.spec().description + "' is not on a GPU");
  return m->device_status();
}

void FailNextDeviceChange(index::VectorIndex& index, Status why) {
  if (auto* m = dynamic_cast<MirroredIndex*>(&index)) m->FailNextChange(std::move(why));
}

}  // namespace vecwal::gpu
