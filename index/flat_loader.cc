// The loader of a checkpoint's flat index (NewIndexLoader): the section's
// bytes go straight into the codes as they are read, and the id tables are
// built beside the read.
#include <faiss/IndexFlat.h>
#include <faiss/IndexIDMap.h>
#include <faiss/impl/io.h>

#include <algorithm>
#include <cstring>
#include <future>
#include <string>
#include <unordered_map>
#include <vector>

#include "index/faiss_parts.h"
#include "index/page_prefaulter.h"

namespace vecwal::index {
namespace {

// What a flat load builds from the section's tail (the bytes after the
// vectors: u64 n, n x i64 id map, then our slot table): FAISS's id map and its
// reverse, and our two tables, the reverse map on a thread of its own.
struct TailTables {
  std::vector<faiss::Index::idx_t> id_map;
  std::unordered_map<faiss::Index::idx_t, faiss::Index::idx_t> rev_map;  // IndexIDMap2's type
  SlotTables slots;
};

Result<TailTables> BuildTailTables(std::span<const std::byte> tail, int64_t ntotal) {
  uint64_t n = 0;
  if (tail.size() < 8) return Status::Corruption("flat index: truncated id map");
  std::memcpy(&n, tail.data(), 8);
  if (n != static_cast<uint64_t>(ntotal) || (tail.size() - 8) / 8 < n)
    return Status::Corruption("flat index: id map of " + std::to_string(n) + " entries for " +
                              std::to_string(ntotal) + " vectors");
  TailTables t;
  t.id_map.resize(n);
  if (n) std::memcpy(t.id_map.data(), tail.data() + 8, n * 8);
  // IndexIDMap2::construct_rev_map, sized once: unsized, the table rehashed
  // every entry about twenty times on the way to a million.
  auto rev = std::async(std::launch::async, [&t] {
    return Guard("loading a flat index", [&t] {
      t.rev_map.reserve(t.id_map.size());
      for (size_t i = 0; i < t.id_map.size(); ++i) t.rev_map[t.id_map[i]] = static_cast<faiss::Index::idx_t>(i);
    });
  });
  Result<SlotTables> slots = Status::Corruption("flat index: slot table not parsed");
  Status parsed = Guard("loading a flat index", [&] { slots = ParseSlotTable(tail.subspan(8 + n * 8)); });
  VECWAL_RETURN_IF_ERROR(rev.get());
  VECWAL_RETURN_IF_ERROR(parsed);
  VECWAL_ASSIGN_OR_RETURN(t.slots, std::move(slots));
  return t;
}

// Loads an IndexIDMap2 over IndexFlatL2/IP as FAISS 1.7.3 writes it:
//   "IxM2" header, "IxF2"|"IxFI" header, u64 floats, codes, u64 n, n x i64 id map,
// then our slot table. A header: i32 d, i64 ntotal, i64 x2 (unused), u8
// is_trained, i32 metric (no metric_arg for L2 and inner product).
class FlatLoader final : public IndexLoader {
 public:
  static std::unique_ptr<FlatLoader> Make(const IndexSpec& spec, std::span<const std::byte> head, uint64_t total) {
    size_t pos = 0;
    auto get = [&](auto* v) {
      if (head.size() - pos < sizeof(*v)) return false;
      std::memcpy(v, head.data() + pos, sizeof(*v));
      pos += sizeof(*v);
      return true;
    };
    uint32_t outer = 0, inner = 0;
    Header a, b;
    uint64_t floats = 0;
    if (!get(&outer) || outer != faiss::fourcc("IxM2") || !ReadHeader(get, &a) || !get(&inner) ||
        !ReadHeader(get, &b) || !get(&floats))
      return nullptr;
    const int metric = ToFaiss(spec.metric);
    const uint32_t want_inner = faiss::fourcc(spec.metric == Metric::kL2 ? "IxF2" : "IxFI");
    const uint64_t row = uint64_t{spec.dim} * sizeof(float);
    // Sizes are bounded by the section before they are multiplied: no product can wrap.
    if (inner != want_inner || a.d != static_cast<int32_t>(spec.dim) || b.d != a.d || a.metric != metric ||
        b.metric != metric || a.ntotal != b.ntotal || a.ntotal < 0 || row == 0 || uint64_t(a.ntotal) > total / row ||
        floats > total || floats * sizeof(float) != uint64_t(a.ntotal) * row ||
        pos + floats * sizeof(float) + 8 > total)
      return nullptr;
    return std::unique_ptr<FlatLoader>(new FlatLoader(spec, pos, floats * sizeof(float), total, a, b));
  }

  Status Feed(std::span<const std::byte> piece) override {
    if (piece.size() > total_ - pos_) return Status::Corruption("flat index loader: more bytes than the section holds");
    // Up to codes_begin_: parsed from the head already.
    const uint64_t end = pos_ + piece.size();
    auto part = [&](uint64_t from, uint64_t to) {
      from = std::max(from, pos_);
      to = std::min(to, end);
      return from < to ? piece.subspan(static_cast<size_t>(from - pos_), static_cast<size_t>(to - from))
                       : std::span<const std::byte>();
    };
    auto codes = part(codes_begin_, codes_begin_ + codes_bytes_);
    if (!codes.empty()) {
      auto* c = reinterpret_cast<const uint8_t*>(codes.data());
      flat_->codes.insert(flat_->codes.end(), c, c + codes.size());  // into reserved room: no zero-fill
      if (prefault_) prefault_->Advance(reinterpret_cast<std::byte*>(flat_->codes.data() + flat_->codes.size()));
    }
    const uint64_t tail_begin = tail_offset();
    auto rest = part(tail_begin, total_);
    if (early_) {  // the tables were built from a read of their own: these bytes must match it
      const uint64_t at = std::max(pos_, tail_begin) - tail_begin;
      if (!rest.empty() && std::memcmp(tail_.data() + at, rest.data(), rest.size()) != 0)
        return Status::Corruption("flat index loader: the section's tail read back other bytes than at first, "
                                  "at byte " + std::to_string(tail_begin + at));
    } else {
      tail_.insert(tail_.end(), rest.begin(), rest.end());
    }
    pos_ = end;
    return Status::OK();
  }

  uint64_t tail_offset() const override { return codes_begin_ + codes_bytes_; }

  Status FeedTail(std::span<const std::byte> tail) override {
    if (early_ || pos_ > tail_offset() || tail.size() != total_ - tail_offset())
      return Status::InvalidArgument("flat index loader: a tail of " + std::to_string(tail.size()) +
                                     " bytes, fed at byte " + std::to_string(pos_) + ", does not fit");
    tail_.assign(tail.begin(), tail.end());
    early_ = true;
    tables_ = std::async(std::launch::async, [this] { return BuildTailTables(tail_, outer_.ntotal); });
    return Status::OK();
  }

  Result<std::unique_ptr<VectorIndex>> Finish() override;

 private:
  struct Header {
    int32_t d = 0;
    int64_t ntotal = 0;
    bool trained = false;
    int32_t metric = -1;
  };
  template <typename Get>
  static bool ReadHeader(Get& get, Header* h) {
    int64_t unused = 0;
    uint8_t trained = 0;
    if (!get(&h->d) || !get(&h->ntotal) || !get(&unused) || !get(&unused) || !get(&trained) || !get(&h->metric))
      return false;
    h->trained = trained != 0;
    return true;
  }

  FlatLoader(const IndexSpec& spec, uint64_t codes_begin, uint64_t codes_bytes, uint64_t total, Header a, Header b)
      : spec_(spec), codes_begin_(codes_begin), codes_bytes_(codes_bytes), total_(total), outer_(a) {
    if (spec.metric == Metric::kL2) flat_ = std::make_unique<faiss::IndexFlatL2>(static_cast<faiss::Index::idx_t>(spec.dim));
    else flat_ = std::make_unique<faiss::IndexFlatIP>(static_cast<faiss::Index::idx_t>(spec.dim));
    flat_->is_trained = b.trained;
    flat_->codes.reserve(codes_bytes);
    auto* data = reinterpret_cast<std::byte*>(flat_->codes.data());
    if (codes_bytes >= kPrefaultMin)  // faults the storage in ahead of the copy, on other cores
      prefault_ = std::make_unique<PagePrefaulter>(data, data + codes_bytes, codes_bytes, kPrefaultThreads);
  }

  const IndexSpec spec_;
  const uint64_t codes_begin_, codes_bytes_, total_;
  const Header outer_;
  uint64_t pos_ = 0;
  std::unique_ptr<faiss::IndexFlat> flat_;
  std::vector<std::byte> tail_;
  bool early_ = false;  // tail_ came whole from FeedTail
  std::future<Result<TailTables>> tables_;  // after tail_, which it reads: joined first
  std::unique_ptr<PagePrefaulter> prefault_;  // after flat_: goes first
};

}  // namespace

std::unique_ptr<IndexLoader> NewIndexLoader(const IndexSpec& spec, std::span<const std::byte> head, uint64_t total) {
  return FlatLoader::Make(spec, head, total);
}

Result<std::unique_ptr<VectorIndex>> FlatLoader::Finish() {
  prefault_.reset();
  if (pos_ != total_) return Status::Corruption("flat index loader: section ended early");
  if (flat_->codes.size() != codes_bytes_) return Status::Corruption("flat index loader: codes incomplete");
  VECWAL_ASSIGN_OR_RETURN(TailTables t, tables_.valid() ? tables_.get() : BuildTailTables(tail_, outer_.ntotal));
  std::unique_ptr<faiss::IndexIDMap2> map;
  VECWAL_RETURN_IF_ERROR(Guard("loading a flat index", [&] {
    map = std::make_unique<faiss::IndexIDMap2>(flat_.get());  // wants the index empty: ntotal is set below
    map->own_fields = true;
  }));
  faiss::IndexFlat* flat = flat_.release();
  flat->ntotal = outer_.ntotal;
  map->ntotal = outer_.ntotal;
  map->is_trained = outer_.trained;
  map->id_map = std::move(t.id_map);
  map->rev_map = std::move(t.rev_map);
  return AdoptLoadedFlat(spec_, std::move(map), std::move(t.slots));
}

}  // namespace vecwal::index
