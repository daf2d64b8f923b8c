// The FAISS CPU backend of VectorIndex. Every FAISS call is wrapped: FAISS
// throws, and an exception must not cross into the durable layer. A flat
// index's checkpoint export is flat_export.cc, its load flat_loader.cc.
#include <omp.h>

#include <faiss/Index.h>
#include <faiss/IndexFlat.h>
#include <faiss/IndexFlatCodes.h>
#include <faiss/Index2Layer.h>
#include <faiss/IndexIDMap.h>
#include <faiss/IndexNSG.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexPreTransform.h>
#include <faiss/impl/IDSelector.h>
#include <faiss/impl/io.h>
#include <faiss/index_factory.h>
#include <faiss/index_io.h>
#include <faiss/invlists/BlockInvertedLists.h>
#include <faiss/invlists/InvertedLists.h>
#include <faiss/utils/distances.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <optional>
#include <typeinfo>

#include "index/faiss_parts.h"
#include "index/faiss_search_params.h"
#include "index/flat_export.h"
#include "index/omp_thread_cap.h"
#include "index/page_prefaulter.h"
#include "index/vector_index.h"
#include "io/prefault.h"

namespace vecwal::index {
namespace {

// Buffers FAISS's many small writes into 1 MiB pieces for the sink, and
// hands its big ones (the vectors: one write of the whole array) straight
// through: buffering those copied the index twice, growing as it went.
struct SinkWriter : faiss::IOWriter {
  explicit SinkWriter(const ByteSink& s) : sink(s) { name = "vecwal checkpoint sink"; }
  size_t operator()(const void* p, size_t size, size_t n) override {
    if (!status.ok()) return 0;
    const auto* b = static_cast<const std::byte*>(p);
    if (size * n >= (1u << 20)) {
      Flush();
      if (status.ok()) status = sink({b, size * n});
      return status.ok() ? n : 0;
    }
    buf.insert(buf.end(), b, b + size * n);
    if (buf.size() >= (1u << 20)) Flush();
    return status.ok() ? n : 0;
  }
  void Flush() {
    if (status.ok() && !buf.empty()) status = sink(buf);
    buf.clear();
  }
  const ByteSink& sink;
  std::vector<std::byte> buf;
  Status status;
};

struct SpanReader : faiss::IOReader {
  explicit SpanReader(std::span<const std::byte> b) : bytes(b) { name = "vecwal checkpoint bytes"; }
  size_t operator()(void* p, size_t size, size_t n) override {
    size_t want = size * n, have = bytes.size() - pos;
    size_t got = std::min(want, have) / (size ? size : 1) * size;
    if (got > 0) std::memcpy(p, bytes.data() + pos, got);
    pos += got;
    return size ? got / size : 0;
  }
  std::span<const std::byte> bytes;
  size_t pos = 0;
};

// The bytes flat codes grow to where `need` outgrows `capacity`: doubling,
// as one insert would, so that growing by adds is amortized O(1) a byte.
size_t GrownCapacity(size_t need, size_t capacity) { return std::max(need, 2 * capacity); }

// Flat codes storage, bigger and filled, made by PrepareRoom with the index
// held shared. TakeRoom swaps it with the index's, after which it holds
// the old storage.
struct FlatRoom final : IndexRoom {
  FlatRoom(const faiss::IndexFlatCodes* f, uint64_t c) : flat(f), changes(c) {}
  const faiss::IndexFlatCodes* flat;
  uint64_t changes;
  std::vector<uint8_t> codes;
};

// A growth under way (VectorIndex::BeginGrowth): storage of twice the
// capacity, filled in steps from the live one, and what changed below its
// fill since it began, which TakeGrowth copies again.
struct FlatGrowth {
  const faiss::IndexFlatCodes* flat;
  std::vector<uint8_t> codes;  // capacity: the grown storage's; size: the bytes copied so far
  size_t low = SIZE_MAX;       // the fewest bytes the live storage held since: copied again from there
  SlotSet dirty;               // rows written below the fill (a removal moves the last row into a hole)
  bool whole = false;          // copied up to the live storage's end, at the last step

  // Row `pos` takes row `last`'s bytes, and the storage ends at `last`.
  void Moved(size_t pos, size_t last, size_t code_size) {
    if (pos * code_size < codes.size()) dirty.insert(pos);
    low = std::min(low, last * code_size);
  }
};

std::unique_ptr<faiss::Index> WithIds(faiss::Index* raw);
faiss::IndexIVF* LabelledIvf(faiss::Index* raw);

// A caller's filter, asked of the labels FAISS sees: rows of the index under
// an id map (turned into slots as the map turns them), or slots. A slot with
// no id (a tombstone) is no member either, so it takes no place among the
// hits FAISS keeps. Asked of each candidate, it looks the slot's id up and
// calls the filter: where a call's queries will compare more candidates than
// the index holds (a flat scan, or IVF probing many lists), the filter is
// asked once per id instead (MaskSlots), and each candidate costs a load.
class FilterSelector final : public faiss::IDSelector {
 public:
  FilterSelector(const std::vector<faiss::Index::idx_t>* row_to_slot, const IdTable& id_of,
                 const std::function<bool(uint64_t)>& filter)
      : row_to_slot_(row_to_slot), id_of_(id_of), filter_(filter) {}
  void MaskSlots(uint64_t slots) {
    mask_.assign(slots, 0);
    for (const auto& [slot, id] : id_of_)
      if (filter_(id)) Pass(slot);
    masked_ = true;
  }
  // The mask from a list of ids (SearchParams::ids), each looked up once.
  void MaskIds(std::span<const uint64_t> ids, const IdTable& slot_of, uint64_t slots) {
    mask_.assign(slots, 0);
    for (uint64_t id : ids)
      if (const auto it = slot_of.find(id); it != slot_of.end() && (!filter_ || filter_(id))) Pass(it->second);
    masked_ = true;
  }
  bool is_member(idx_t label) const override {
    if (label < 0) return false;
    const auto slot = static_cast<uint64_t>(row_to_slot_ != nullptr ? (*row_to_slot_)[static_cast<size_t>(label)] : label);
    if (masked_) return slot < mask_.size() && mask_[slot] != 0;
    const auto it = id_of_.find(slot);
    return it != id_of_.end() && filter_(it->second);
  }
  // Whether a hit FAISS returned (its slot, and the id it holds) passes.
  bool Passes(uint64_t slot, uint64_t id) const {
    return masked_ ? slot < mask_.size() && mask_[slot] != 0 : filter_(id);
  }

 private:
  const std::vector<faiss::Index::idx_t>* row_to_slot_;
  const IdTable& id_of_;
  void Pass(uint64_t slot) {
    if (slot >= mask_.size()) mask_.resize(slot + 1, 0);  // never, while next_slot_ bounds the slots
    mask_[slot] = 1;
  }

  const std::function<bool(uint64_t)>& filter_;
  std::vector<uint8_t> mask_;  // by slot, where masked_
  bool masked_ = false;
};

// What Build is given for a filter that CheckSearchParams only checks.
struct NoMembers final : faiss::IDSelector {
  bool is_member(idx_t) const override { return false; }
};

class FaissIndex final : public VectorIndex {
 public:
  FaissIndex(IndexSpec spec, std::unique_ptr<faiss::Index> idx) : spec_(std::move(spec)), index_(std::move(idx)) {
    removable_ = Removes(*index_);
  }
  // For a caller that knows the index can remove ids: the probe above scans
  // every vector and rebuilds IndexIDMap2's reverse map (0.1-0.2 s at 1M).
  struct Removable {};
  FaissIndex(IndexSpec spec, std::unique_ptr<faiss::Index> idx, Removable)
      : spec_(std::move(spec)), index_(std::move(idx)) {}

  const IndexSpec& spec() const override { return spec_; }
  bool is_trained() const override { return index_->is_trained; }

  Status Train(std::span<const float> sample) override {
    VECWAL_RETURN_IF_ERROR(CheckRows(sample, "training sample"));
    if (sample.empty()) return Status::InvalidArgument("training sample is empty");
    // FAISS's k-means refuses these, but a scalar quantizer takes them into
    // its ranges, and every vector is then encoded against NaN for good.
    VECWAL_RETURN_IF_ERROR(
        CheckFinite(sample, spec_.dim, [](size_t row) { return "training sample row " + std::to_string(row); }));
    return Guard("training '" + spec_.description + "'", [&] {
      index_->train(static_cast<faiss::Index::idx_t>(sample.size() / spec_.dim), sample.data());
    });
  }

  Status Add(std::span<const uint64_t> ids, std::span<const float> vectors) override {
    if (vectors.size() != ids.size() * spec_.dim)
      return Status::InvalidArgument("add of " + std::to_string(ids.size()) + " ids with " +
                                     std::to_string(vectors.size()) + " floats; dimension is " +
                                     std::to_string(spec_.dim));
    return AddSlots(ids, [&](std::span<const faiss::Index::idx_t> slots) {
      if (auto* raw = RawFlat()) {
        const auto* bytes = reinterpret_cast<const uint8_t*>(vectors.data());
        raw->codes.insert(raw->codes.end(), bytes, bytes + vectors.size_bytes());
        AppendSlots(*raw, slots);
      } else {
        index_->add_with_ids(static_cast<faiss::Index::idx_t>(ids.size()), vectors.data(), slots.data());
      }
    });
  }

  Status AddRows(std::span<const uint64_t> ids, std::span<const std::byte* const> rows) override {
    auto* raw = RawFlat();
    if (raw == nullptr || rows.size() != ids.size()) return VectorIndex::AddRows(ids, rows);  // gathers, then Add
    return AddSlots(ids, [&](std::span<const faiss::Index::idx_t> slots) {
      const size_t bytes = raw->code_size;
      auto& codes = raw->codes;
      // Room first (doubling, as one insert would), so that no row's insert
      // can throw with rows before it in.
      if (const size_t need = codes.size() + rows.size() * bytes; need > codes.capacity())
        codes.reserve(GrownCapacity(need, codes.capacity()));
      for (const std::byte* r : rows) {
        const auto* b = reinterpret_cast<const uint8_t*>(r);
        codes.insert(codes.end(), b, b + bytes);
      }
      AppendSlots(*raw, slots);
    });
  }

  // Add's checks and bookkeeping around `append`, which puts the vectors
  // into FAISS under `slots`.
  Status AddSlots(std::span<const uint64_t> ids,
                  const std::function<void(std::span<const faiss::Index::idx_t>)>& append) {
    if (!index_->is_trained)
      return Status::InvalidArgument("index '" + spec_.description + "' must be trained before adds");
    SlotSet batch;
    batch.reserve(ids.size());
    for (uint64_t id : ids)
      if (slot_of_.count(id) || !batch.insert(id).second)
        return Status::InvalidArgument("id " + std::to_string(id) + " is already in the index");
    std::vector<faiss::Index::idx_t> slots(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) slots[i] = static_cast<faiss::Index::idx_t>(next_slot_ + i);
    auto* flat = prefault_ ? FlatCodes() : nullptr;  // a prefaulter exists only over flat codes
    if (flat && flat->codes.size() + ids.size() * flat->code_size > flat->codes.capacity())
      prefault_.reset();  // the add moves the storage
    VECWAL_RETURN_IF_ERROR(Guard("adding to '" + spec_.description + "'", [&] { append(slots); }));
    if (prefault_) prefault_->Advance(reinterpret_cast<std::byte*>(flat->codes.data() + flat->codes.size()));
    // Adds that outgrew the storage before the growth was taken grew it as
    // much themselves: the growth would add nothing.
    if (growth_ != nullptr && growth_->flat->codes.capacity() >= growth_->codes.capacity()) growth_.reset();
    for (size_t i = 0; i < ids.size(); ++i) {
      slot_of_[ids[i]] = next_slot_ + i;
      id_of_[next_slot_ + i] = ids[i];
    }
    next_slot_ += ids.size();
    ++changes_;
    return Status::OK();
  }

  Status Remove(std::span<const uint64_t> ids) override {
    std::vector<faiss::Index::idx_t> slots;
    for (uint64_t id : ids) {
      auto it = slot_of_.find(id);
      if (it == slot_of_.end()) continue;
      slots.push_back(static_cast<faiss::Index::idx_t>(it->second));
      if (export_ != nullptr) export_->PreserveId(it->second, id);
      if (compaction_ != nullptr) compaction_->Removed(it->second);
      id_of_.erase(it->second);
      slot_of_.erase(it);
    }
    if (slots.empty()) return Status::OK();
    ++changes_;
    if (!removable_) {
      dead_.insert(slots.begin(), slots.end());
      return Status::OK();
    }
    if (auto* flat = SwappableFlat()) {
      auto& map = *static_cast<faiss::IndexIDMap2*>(index_.get());
      for (auto slot : slots) RemoveBySwap(map, *flat, slot, export_, growth_.get());
      return Status::OK();
    }
    return Guard("removing from '" + spec_.description + "'",
                 [&] { RemoveLabels(*index_, slots.size(), slots.data()); });
  }

  using VectorIndex::Search;
  // Tombstones and the caller's `skip` ids are filtered out of FAISS's hits,
  // so FAISS is asked for more than k. How many more depends on the index:
  // - Where FAISS removes (every index without tombstones), a longer list
  //   costs little and a second pass a whole search: ask once for k plus
  //   every skipped id it holds, which no query can come up short of.
  // - A graph search's cost grows with the list (HNSW searches
  //   max(efSearch, list) candidates), so asking for k plus every tombstone
  //   made each query as slow as the tombstones were many: ask for a little
  //   more than k, and go back, with four times as many, only for the
  //   queries that came up short.
  Result<SearchResults> Search(std::span<const float> queries, size_t k, const IdSet* skip,
                               const SearchParams& params) const override {
    VECWAL_RETURN_IF_ERROR(CheckRows(queries, "queries"));
    VECWAL_RETURN_IF_ERROR(CheckResultSize(queries.size() / spec_.dim, k));
    const auto* map = dynamic_cast<const faiss::IndexIDMap2*>(index_.get());
    std::optional<FilterSelector> sel;
    if (params.filter || params.ids) sel.emplace(map != nullptr ? &map->id_map : nullptr, id_of_, params.filter);
    FaissSearchParams fp;
    VECWAL_RETURN_IF_ERROR(fp.Build(Searched(), params, spec_.description, sel ? &*sel : nullptr));
    if (params.ids) sel->MaskIds(*params.ids, slot_of_, next_slot_);
    else if (sel && static_cast<double>(queries.size() / spec_.dim) * fp.scanned_share() >= 1.0) sel->MaskSlots(next_slot_);
    SearchResults r;
    r.nq = queries.size() / spec_.dim;
    r.k = k;
    r.ids.assign(r.nq * k, kNoId);
    r.distances.assign(r.nq * k, std::numeric_limits<float>::quiet_NaN());
    const size_t total = static_cast<size_t>(index_->ntotal);
    if (r.nq == 0 || k == 0 || total == 0) return r;
    size_t filtered = dead_.size();
    if (skip != nullptr)
      for (uint64_t id : *skip) filtered += slot_of_.count(id);
    const size_t most = std::min(total, k + filtered);
    size_t kk = removable_ ? most : std::min(most, k + std::min(filtered, std::max<size_t>(k, 16)));
    kk = std::max(kk, std::min(fp.least_k(), total));  // HNSW's ef_search (faiss_search_params.h)
    std::vector<size_t> rows(r.nq);
    for (size_t q = 0; q < r.nq; ++q) rows[q] = q;
    std::vector<float> gathered, d;
    std::vector<faiss::Index::idx_t> l;
    while (!rows.empty()) {
      std::span<const float> qs = queries;
      if (rows.size() != r.nq) {
        gathered.resize(rows.size() * spec_.dim);
        for (size_t i = 0; i < rows.size(); ++i)
          std::copy_n(queries.data() + rows[i] * spec_.dim, spec_.dim, gathered.data() + i * spec_.dim);
        qs = gathered;
      }
      d.resize(rows.size() * kk);
      l.resize(rows.size() * kk);
      VECWAL_RETURN_IF_ERROR(Guard("searching '" + spec_.description + "'", [&] {
        const OmpThreadCap cap(rows.size());
        SearchFaiss(static_cast<faiss::Index::idx_t>(rows.size()), qs.data(), static_cast<faiss::Index::idx_t>(kk),
                    d.data(), l.data(), fp);
      }));
      size_t short_rows = 0;
      for (size_t i = 0; i < rows.size(); ++i) {
        const size_t q = rows[i];
        std::fill_n(r.ids.begin() + q * k, k, kNoId);  // a second pass may find fewer
        std::fill_n(r.distances.begin() + q * k, k, std::numeric_limits<float>::quiet_NaN());
        size_t out = 0;
        for (size_t j = 0; j < kk && out < k; ++j) {
          faiss::Index::idx_t slot = l[i * kk + j];
          if (slot < 0) break;
          auto it = id_of_.find(static_cast<uint64_t>(slot));
          if (it == id_of_.end()) continue;  // a tombstone
          if (skip != nullptr && skip->contains(it->second)) continue;
          if (sel && !sel->Passes(static_cast<uint64_t>(slot), it->second)) continue;
          r.ids[q * k + out] = it->second;
          r.distances[q * k + out] = d[i * kk + j];
          ++out;
        }
        if (out < k && kk < most) rows[short_rows++] = q;
      }
      rows.resize(short_rows);
      kk = std::min(most, 4 * kk);
    }
    return r;
  }

  Status CheckSearchParams(const SearchParams& params) const override {
    FaissSearchParams fp;
    NoMembers none;
    return fp.Build(Searched(), params, spec_.description, params.filter || params.ids ? &none : nullptr);
  }

  // Flat computes distances by BLAS from FAISS's threshold on, and so does
  // the coarse quantizer of an IVF index, where that is Flat.
  size_t SearchBatchFloor() const override {
    const faiss::Index* inner = &Searched();
    if (const auto* ivf = dynamic_cast<const faiss::IndexIVF*>(inner)) inner = ivf->quantizer;
    return IsRawFlat(inner) ? static_cast<size_t>(std::max(faiss::distance_compute_blas_threshold, 1)) : 1;
  }

  bool Contains(uint64_t id) const override { return slot_of_.count(id) != 0; }

  Result<std::vector<float>> Reconstruct(uint64_t id) const override {
    auto it = slot_of_.find(id);
    if (it == slot_of_.end()) return Status::NotFound("id " + std::to_string(id) + " is not in the index");
    std::vector<float> v(spec_.dim);
    VECWAL_RETURN_IF_ERROR(Guard("reconstructing id " + std::to_string(id), [&] {
      index_->reconstruct(static_cast<faiss::Index::idx_t>(it->second), v.data());
    }));
    return v;
  }

  void Reserve(size_t n) override {
    slot_of_.reserve(n);
    id_of_.reserve(n);
    auto* map = dynamic_cast<faiss::IndexIDMap2*>(index_.get());
    if (map == nullptr) return;
    map->id_map.reserve(n);
    map->rev_map.reserve(n);
    auto* flat = FlatCodes();
    if (flat == nullptr) return;
    prefault_.reset();
    ++changes_;
    growth_.reset();  // the reserve may move the storage, and grow it as much
    flat->codes.reserve(n * flat->code_size);
    auto* data = reinterpret_cast<std::byte*>(flat->codes.data());
    if (flat->codes.capacity() - flat->codes.size() >= kPrefaultMin)
      prefault_ = std::make_unique<PagePrefaulter>(data + flat->codes.size(), data + flat->codes.capacity(),
                                                   kReplayPrefaultLead, kPrefaultThreads);
  }

  Status ScanLive(size_t rows_per_piece, const LiveVisitor& visit) const override {
    rows_per_piece = std::max<size_t>(rows_per_piece, 1);
    std::vector<uint64_t> ids;
    ids.reserve(std::min(rows_per_piece, size()));
    if (const auto* raw = RawFlat()) {
      // The rows in place, in row order: no copy of the vectors.
      const auto& slots = dynamic_cast<const faiss::IndexIDMap2&>(*index_).id_map;
      const auto* rows = reinterpret_cast<const float*>(raw->codes.data());
      for (size_t first = 0; first < slots.size(); first += rows_per_piece) {
        const size_t n = std::min(rows_per_piece, slots.size() - first);
        ids.clear();
        for (size_t r = first; r < first + n; ++r) {
          auto it = id_of_.find(static_cast<uint64_t>(slots[r]));
          if (it == id_of_.end())
            return Status::Corruption("index '" + spec_.description + "': row " + std::to_string(r) + " has slot " +
                                      std::to_string(slots[r]) + ", which holds no id");
          ids.push_back(it->second);
        }
        VECWAL_RETURN_IF_ERROR(visit(ids, std::span(rows + first * spec_.dim, n * spec_.dim)));
      }
      return Status::OK();
    }
    std::vector<float> vectors;
    vectors.reserve(ids.capacity() * spec_.dim);
    auto flush = [&]() -> Status {
      Status s = ids.empty() ? Status::OK() : visit(ids, vectors);
      ids.clear();
      vectors.clear();
      return s;
    };
    for (const auto& entry : id_of_) {
      const auto slot = static_cast<faiss::Index::idx_t>(entry.first);  // clang's lambdas take no structured binding
      ids.push_back(entry.second);
      vectors.resize(ids.size() * spec_.dim);
      VECWAL_RETURN_IF_ERROR(Guard("reconstructing id " + std::to_string(entry.second), [&] {
        index_->reconstruct(slot, vectors.data() + (ids.size() - 1) * spec_.dim);
      }));
      if (ids.size() == rows_per_piece) VECWAL_RETURN_IF_ERROR(flush());
    }
    return flush();
  }

  size_t size() const override { return slot_of_.size(); }
  size_t tombstones() const override { return dead_.size(); }

  size_t capacity() const override {
    auto* flat = FlatCodes();
    return flat != nullptr ? flat->codes.capacity() / flat->code_size : VectorIndex::capacity();
  }

  std::unique_ptr<IndexRoom> PrepareRoom(size_t more) const override {
    auto* flat = FlatCodes();
    if (flat == nullptr || more == 0) return nullptr;
    const auto& codes = flat->codes;
    const size_t need = codes.size() + more * flat->code_size;
    if (need <= codes.capacity()) {
      (void)PrefaultForWrite(reinterpret_cast<std::byte*>(const_cast<uint8_t*>(codes.data())) + codes.size(),
                             need - codes.size());
      return nullptr;
    }
    // A growth under way is finished here, which copies only what it has
    // not, and TakeGrowth puts it in place.
    if (std::lock_guard l(growth_mu_); growth_ != nullptr && need <= growth_->codes.capacity()) {
      while (CopyGrowth(SIZE_MAX)) {
      }
      return nullptr;
    }
    auto room = std::make_unique<FlatRoom>(flat, changes_);
    try {
      room->codes.reserve(GrownCapacity(need, codes.capacity()));  // what the adds would reserve
    } catch (const std::bad_alloc&) {
      return nullptr;  // the adds try, and fail as they would have
    }
    (void)PrefaultForWrite(reinterpret_cast<std::byte*>(room->codes.data()), need);
    room->codes.assign(codes.begin(), codes.end());  // within the capacity reserved: no move
    return room;
  }

  void TakeRoom(IndexRoom& r) override {
    auto* room = dynamic_cast<FlatRoom*>(&r);
    auto* flat = FlatCodes();
    if (room == nullptr || room->flat != flat || room->changes != changes_ || room->codes.size() != flat->codes.size())
      return;
    prefault_.reset();  // it follows the old storage
    growth_.reset();    // which grew as much as the growth would
    flat->codes.swap(room->codes);
    ++changes_;
  }

  bool BeginGrowth(size_t min_bytes) override {
    auto* flat = SwappableFlat();  // every row it writes below its end is one RemoveBySwap moves
    if (growth_ != nullptr && growth_->flat == flat) return true;
    growth_.reset();
    if (flat == nullptr) return false;
    const auto& codes = flat->codes;
    // From half full: copying the half takes about as long as filling the
    // other half, at a fast ingest (copies here run at a few GB/s).
    if (codes.capacity() == 0 || codes.capacity() < min_bytes || codes.size() < codes.capacity() / 2) return false;
    auto g = std::make_unique<FlatGrowth>();
    g->flat = flat;
    try {
      g->codes.reserve(GrownCapacity(codes.capacity() + 1, codes.capacity()));  // address space; faulted in steps
    } catch (const std::bad_alloc&) {
      return false;  // the adds grow it as they need, and fail as they would have
    }
    growth_ = std::move(g);
    return true;
  }

  bool GrowStep(size_t bytes) override {
    std::lock_guard l(growth_mu_);
    return CopyGrowth(bytes);
  }

  // GrowStep's copy, under growth_mu_ (PrepareRoom finishes a growth too).
  bool CopyGrowth(size_t bytes) const {
    FlatGrowth* g = growth_.get();
    auto* flat = FlatCodes();
    if (g == nullptr || g->flat != flat) return false;
    const auto& live = flat->codes;
    const size_t from = std::min(g->codes.size(), live.size());
    const size_t to = from + std::min(live.size() - from, std::max<size_t>(bytes / flat->code_size, 1) * flat->code_size);
    g->codes.resize(from);  // below the fill only where removals shrank the storage: Moved lowered `low` then
    (void)PrefaultForWrite(reinterpret_cast<std::byte*>(g->codes.data()) + from, to - from);
    g->codes.insert(g->codes.end(), live.begin() + static_cast<ptrdiff_t>(from), live.begin() + static_cast<ptrdiff_t>(to));
    g->whole = to == live.size();
    return !g->whole;
  }

  std::unique_ptr<IndexRoom> TakeGrowth() override {
    if (growth_ == nullptr || !growth_->whole) return nullptr;
    std::unique_ptr<FlatGrowth> g = std::move(growth_);
    auto* flat = FlatCodes();
    if (g->flat != flat) return nullptr;
    auto& live = flat->codes;
    const size_t cs = flat->code_size;
    const size_t keep = std::min({g->low, g->codes.size(), live.size()});
    for (uint64_t row : g->dirty)
      if ((row + 1) * cs <= keep) std::memcpy(g->codes.data() + row * cs, live.data() + row * cs, cs);
    g->codes.resize(keep);
    g->codes.insert(g->codes.end(), live.begin() + static_cast<ptrdiff_t>(keep), live.end());  // what came since
    prefault_.reset();  // it follows the old storage
    live.swap(g->codes);
    ++changes_;
    auto old = std::make_unique<FlatRoom>(flat, changes_);
    old->codes.swap(g->codes);
    return old;
  }

  Result<std::unique_ptr<IndexCompaction>> BeginCompaction() override {
    if (dead_.empty()) return std::unique_ptr<IndexCompaction>();
    if (compaction_ != nullptr)
      return Status::InvalidArgument("'" + spec_.description + "' is being compacted already");
    std::unique_ptr<faiss::Index> fresh;
    VECWAL_RETURN_IF_ERROR(Guard("compacting '" + spec_.description + "'", [&] { fresh = EmptyLike(); }));
    std::vector<uint64_t> slots;
    slots.reserve(id_of_.size());
    for (const auto& [slot, id] : id_of_) slots.push_back(slot);
    std::sort(slots.begin(), slots.end());
    auto c = std::make_unique<Compaction>(*this, std::move(fresh), std::move(slots));
    compaction_ = c.get();
    return std::unique_ptr<IndexCompaction>(std::move(c));
  }

  Status FinishCompaction(std::unique_ptr<IndexCompaction> c) override {
    auto* mine = dynamic_cast<Compaction*>(c.get());
    if (mine == nullptr || mine != compaction_)
      return Status::InvalidArgument("not a compaction of '" + spec_.description + "' in progress");
    VECWAL_RETURN_IF_ERROR(mine->CopyAll());  // what the caller left uncopied, and what was added since
    prefault_.reset();  // the index and its storage are replaced
    growth_.reset();
    ++changes_;
    index_ = mine->TakeFresh();
    dead_ = SlotSet(mine->dead().begin(), mine->dead().end());
    return Status::OK();
  }

  Status Serialize(const ByteSink& sink) const override {
    SinkWriter w(sink);
    VECWAL_RETURN_IF_ERROR(Guard("serializing '" + spec_.description + "'", [&] { faiss::write_index(index_.get(), &w); }));
    WriteTable(w);
    w.Flush();
    return w.status;
  }

  Result<std::unique_ptr<IndexExport>> BeginExport() override {
    auto* flat = SwappableFlat();  // the export keeps rows as removals move them
    if (flat == nullptr || export_ != nullptr) return std::unique_ptr<IndexExport>();
    auto* map = static_cast<faiss::IndexIDMap2*>(index_.get());
    if (!dead_.empty() || map->id_map.size() != id_of_.size()) return std::unique_ptr<IndexExport>();
    auto ex = std::make_unique<FlatExport>(*flat, &export_, map->id_map, id_of_, next_slot_);
    SplitWriter w(flat->codes.data(), flat->codes.size(), *ex);
    VECWAL_RETURN_IF_ERROR(Guard("exporting '" + spec_.description + "'", [&] { faiss::write_index(index_.get(), &w); }));
    if (!w.seen && !flat->codes.empty())  // not the layout this export knows: copy instead
      return std::unique_ptr<IndexExport>();
    return std::unique_ptr<IndexExport>(std::move(ex));  // the slot table follows, row by row
  }

  // Takes a parsed slot table; the index must hold exactly its vectors.
  Status AdoptTable(SlotTables t) {
    if (static_cast<uint64_t>(index_->ntotal) != t.id_of.size() + t.dead.size())
      return Status::Corruption("index holds " + std::to_string(index_->ntotal) + " vectors but its slot table " +
                                std::to_string(t.id_of.size() + t.dead.size()));
    next_slot_ = t.next_slot;
    slot_of_ = std::move(t.slot_of);
    id_of_ = std::move(t.id_of);
    dead_ = std::move(t.dead);
    return Status::OK();
  }

 private:
  // FAISS's remove_ids of `n` labels, through the selector the index takes:
  // an IVF index's direct map (a hash table: WithIds) finds each label in
  // O(1) and takes only a selector that lists them (IDSelectorArray). The
  // probe once used a batch selector, which it refused, and IVF indexes kept
  // tombstones.
  static void RemoveLabels(faiss::Index& idx, size_t n, const faiss::Index::idx_t* labels) {
    if (LabelledIvf(&idx) != nullptr)
      idx.remove_ids(faiss::IDSelectorArray(n, labels));
    else
      idx.remove_ids(faiss::IDSelectorBatch(n, labels));
  }

  // HNSW and other graph indices cannot remove: probe once with an empty
  // selector, and keep tombstones for them. An IVF index's lists packed in
  // blocks (fast scan: "IVF...,PQ8x4fs") pass the probe and refuse the first
  // real removal (BlockInvertedLists::update_entries), which failed the store
  // at an op already logged: they keep tombstones too.
  static bool Removes(faiss::Index& idx) {
    faiss::IndexIVF* ivf = LabelledIvf(&idx);
    if (ivf != nullptr && dynamic_cast<faiss::BlockInvertedLists*>(ivf->invlists) != nullptr) return false;
    try {
      RemoveLabels(idx, 0, nullptr);
    } catch (const std::exception&) {
      return false;
    }
    return true;
  }

  // What FAISS searches: the index under the id map, or the IVF index.
  const faiss::Index& Searched() const {
    const auto* map = dynamic_cast<const faiss::IndexIDMap2*>(index_.get());
    return map != nullptr ? *map->index : *index_;
  }
  // index_->search, with `fp`'s parameters where there are any. IndexIDMap2 refuses
  // parameters (FAISS 1.7.3), so the index under it is searched and its row
  // numbers are turned into labels (slots) as the map would.
  void SearchFaiss(faiss::Index::idx_t n, const float* x, faiss::Index::idx_t k, float* d, faiss::Index::idx_t* l,
                   const FaissSearchParams& fp) const {
    const auto* map = dynamic_cast<const faiss::IndexIDMap2*>(index_.get());
    if (fp.ivf_quantizer_ef()) {  // an IVF index, which no id map wraps
      fp.SearchIvfWithQuantizerEf(n, x, k, d, l);
      return;
    }
    const faiss::SearchParameters* params = fp.get();
    if (params == nullptr || map == nullptr) {
      index_->search(n, x, k, d, l, params);
      return;
    }
    map->index->search(n, x, k, d, l, params);
    for (faiss::Index::idx_t i = 0; i < n * k; ++i)
      if (l[i] >= 0) l[i] = map->id_map[static_cast<size_t>(l[i])];
  }

  // The flat codes under the id map, where vectors are stored raw.
  faiss::IndexFlatCodes* FlatCodes() const {
    auto* map = dynamic_cast<faiss::IndexIDMap2*>(index_.get());
    return map ? dynamic_cast<faiss::IndexFlatCodes*>(map->index) : nullptr;
  }
  // The same where rows may move (RemoveBySwap): not IndexFlat1D, which
  // keeps a sorted order of its own.
  faiss::IndexFlatCodes* SwappableFlat() const {
    auto* flat = FlatCodes();
    return flat != nullptr && dynamic_cast<faiss::IndexFlat1D*>(flat) == nullptr ? flat : nullptr;
  }

  // Whether a code of `i` is the float vector's bytes: IndexFlat (what the
  // factory's "Flat" makes) or IndexFlatL2/IP (what the loader makes), exactly;
  // no subclass (IndexFlat1D's sorted order) keeps state beside the codes.
  static bool IsRawFlat(const faiss::Index* i) {
    if (i == nullptr) return false;
    const std::type_info& t = typeid(*i);
    return t == typeid(faiss::IndexFlat) || t == typeid(faiss::IndexFlatL2) || t == typeid(faiss::IndexFlatIP);
  }
  // The flat codes under the id map where they are such.
  faiss::IndexFlat* RawFlat() const {
    auto* flat = FlatCodes();
    return IsRawFlat(flat) ? static_cast<faiss::IndexFlat*>(flat) : nullptr;
  }
  // What IndexIDMap2::add_with_ids does for such an index, once the caller
  // has put the vectors straight into the codes' reserved room: FAISS
  // resizes (zero-fills) and then copies, two passes over every byte (at
  // 1M x 768-d, 3 GB each).
  void AppendSlots(faiss::IndexFlat& flat, std::span<const faiss::Index::idx_t> slots) {
    auto& map = *static_cast<faiss::IndexIDMap2*>(index_.get());
    const faiss::Index::idx_t first = flat.ntotal;
    flat.ntotal += static_cast<faiss::Index::idx_t>(slots.size());
    map.id_map.insert(map.id_map.end(), slots.begin(), slots.end());
    for (size_t i = 0; i < slots.size(); ++i) map.rev_map[slots[i]] = first + static_cast<faiss::Index::idx_t>(i);
    map.ntotal = flat.ntotal;
  }

  // The slot table: magic, next slot, live (slot, id) pairs, dead slots.
  // Under an id map the pairs go in FAISS's row order, as an export writes
  // them (the loader takes any order).
  void WriteTable(faiss::IOWriter& w) const {
    auto put = [&](uint64_t v) { w(&v, sizeof(v), 1); };
    put(kTableMagic);
    put(next_slot_);
    put(id_of_.size());
    if (auto* map = dynamic_cast<const faiss::IndexIDMap2*>(index_.get())) {
      for (faiss::Index::idx_t label : map->id_map)
        if (auto it = id_of_.find(static_cast<uint64_t>(label)); it != id_of_.end()) {
          put(it->first);
          put(it->second);
        }
    } else {
      for (const auto& [slot, id] : id_of_) {
        put(slot);
        put(id);
      }
    }
    put(dead_.size());
    for (uint64_t s : dead_) put(s);
  }

  // FAISS removes from flat codes by shifting every later vector down: O(n)
  // per call, which made each upsert of an existing id in a 1M-vector Flat
  // store move gigabytes. Order inside flat codes means nothing to a search,
  // so the last vector moves into the hole instead: O(d).
  static void RemoveBySwap(faiss::IndexIDMap2& map, faiss::IndexFlatCodes& flat, faiss::Index::idx_t slot,
                           FlatExport* ex, FlatGrowth* growth) {
    auto it = map.rev_map.find(slot);
    if (it == map.rev_map.end()) return;
    const size_t pos = static_cast<size_t>(it->second), last = static_cast<size_t>(flat.ntotal) - 1;
    const size_t cs = flat.code_size;
    if (ex != nullptr) {  // both rows change: the export keeps what it has not written
      ex->Preserve(pos);
      ex->Preserve(last);
    }
    if (growth != nullptr) growth->Moved(pos, last, cs);
    if (pos != last) {
      std::memcpy(flat.codes.data() + pos * cs, flat.codes.data() + last * cs, cs);
      const faiss::Index::idx_t moved = map.id_map[last];
      map.id_map[pos] = moved;
      map.rev_map[moved] = static_cast<faiss::Index::idx_t>(pos);
    }
    map.rev_map.erase(it);
    map.id_map.pop_back();
    flat.codes.resize(last * cs);
    flat.ntotal = static_cast<faiss::Index::idx_t>(last);
    map.ntotal = flat.ntotal;
  }

  Status CheckRows(std::span<const float> v, const char* what) const {
    if (v.size() % spec_.dim != 0)
      return Status::InvalidArgument(std::string(what) + ": " + std::to_string(v.size()) +
                                     " floats is not a multiple of dimension " + std::to_string(spec_.dim));
    return Status::OK();
  }

  // See IndexCompaction. Slots keep their numbers in the new index, so the
  // id tables stay as they are. It copies the slots live when it began, then
  // the ones added since (slots only grow: they follow its first new one),
  // until fewer than kLeftForFinish remain, which the finish adds with the
  // index held. A slot removed after its vector was copied becomes a
  // tombstone of the new index; one removed before is never copied.
  class Compaction final : public IndexCompaction {
   public:
    Compaction(FaissIndex& owner, std::unique_ptr<faiss::Index> fresh, std::vector<uint64_t> slots)
        : owner_(owner),
          fresh_(std::move(fresh)),
          slots_(std::move(slots)),
          first_new_slot_(owner.next_slot_),
          next_new_(owner.next_slot_),
          chase_to_(owner.next_slot_) {}
    ~Compaction() override {
      if (owner_.compaction_ == this) owner_.compaction_ = nullptr;
    }

    Result<bool> CopyNext() override { return Copy(kLeftForFinish); }

    Status AddCopied() override {
      if (labels_.empty()) return Status::OK();
      return Guard("compacting '" + owner_.spec_.description + "'", [&] {
        fresh_->add_with_ids(static_cast<faiss::Index::idx_t>(labels_.size()), vectors_.data(), labels_.data());
      });
    }

    // By the index, held exclusively: adds every slot not yet copied.
    Status CopyAll() {
      for (;;) {
        VECWAL_ASSIGN_OR_RETURN(bool more, Copy(0));
        if (!more) return Status::OK();
        VECWAL_RETURN_IF_ERROR(AddCopied());
      }
    }
    // By the index, held exclusively: `slot` is removed.
    void Removed(uint64_t slot) {
      const bool copied = slot < first_new_slot_ ? pos_ > 0 && slot <= slots_[pos_ - 1] : slot < next_new_;
      if (copied) dead_.push_back(slot);
    }
    std::unique_ptr<faiss::Index> TakeFresh() { return std::move(fresh_); }
    const std::vector<uint64_t>& dead() const { return dead_; }

   private:
    // The new slots are copied in rounds, each up to the slots there when it
    // began: chasing the writers' adds would not end while they add as fast
    // as the new index takes them.
    static constexpr uint64_t kLeftForFinish = 1024;
    static constexpr int kChaseRounds = 4;
    static constexpr size_t kCopyBytes = 16 << 20;  // a shared hold copies this much

    // Copies the next few MB of live vectors; false once fewer than `leave`
    // new slots are left to copy.
    Result<bool> Copy(uint64_t leave) {
      labels_.clear();
      vectors_.clear();
      const size_t dim = owner_.spec_.dim;
      const size_t chunk = std::max<size_t>(1, kCopyBytes / (dim * sizeof(float)));
      auto take = [&](uint64_t slot) {
        if (!owner_.id_of_.count(slot)) return;  // removed before it was copied
        labels_.push_back(static_cast<faiss::Index::idx_t>(slot));
        vectors_.resize(labels_.size() * dim);
        owner_.index_->reconstruct(labels_.back(), vectors_.data() + (labels_.size() - 1) * dim);
      };
      if (pos_ == slots_.size() && next_new_ == chase_to_) {  // a round over the new slots ends
        const uint64_t left = owner_.next_slot_ - next_new_;
        if (left == 0 || (leave != 0 && (left <= leave || rounds_ == kChaseRounds))) return false;
        chase_to_ = owner_.next_slot_;
        ++rounds_;
      }
      VECWAL_RETURN_IF_ERROR(Guard("compacting '" + owner_.spec_.description + "'", [&] {
        for (size_t n = 0; n < chunk && pos_ < slots_.size(); ++n) take(slots_[pos_++]);
        for (size_t n = labels_.size(); n < chunk && next_new_ < chase_to_; ++n) take(next_new_++);
      }));
      return true;
    }

    FaissIndex& owner_;
    std::unique_ptr<faiss::Index> fresh_;
    const std::vector<uint64_t> slots_;  // live when it began, ascending
    const uint64_t first_new_slot_;
    size_t pos_ = 0;     // slots_[0, pos_) are copied (or were removed first)
    uint64_t next_new_;  // new slots below it are copied (or were removed first)
    uint64_t chase_to_;  // where this round over the new slots ends
    int rounds_ = 0;
    std::vector<faiss::Index::idx_t> labels_;
    std::vector<float> vectors_;
    std::vector<uint64_t> dead_;
  };

  // An empty index of this one's kind. A factory-made one where it needs no
  // training (HNSW): copying through the serializer, as below, would copy
  // every vector with the index held. Where it was trained, that copy keeps
  // what training learned, and the exact index classes (which
  // faiss::clone_index does not keep for HNSW).
  std::unique_ptr<faiss::Index> EmptyLike() const {
    std::unique_ptr<faiss::Index> fresh =
        WithIds(faiss::index_factory(static_cast<int>(spec_.dim), spec_.description.c_str(), ToFaiss(spec_.metric)));
    if (fresh->is_trained) return fresh;
    faiss::VectorIOWriter w;
    faiss::write_index(index_.get(), &w);
    faiss::VectorIOReader r;
    r.data = std::move(w.data);
    fresh.reset(faiss::read_index(&r));
    fresh->reset();
    return fresh;
  }

  IndexSpec spec_;
  std::unique_ptr<faiss::Index> index_;  // labels are slots
  bool removable_ = true;
  IdTable slot_of_;  // live id -> slot
  IdTable id_of_;    // live slot -> id
  SlotSet dead_;     // tombstoned slots
  uint64_t next_slot_ = 0;
  // After index_: it goes first, while the storage it faults in still exists.
  std::unique_ptr<PagePrefaulter> prefault_;
  // Counts the changes to the index's storage, so that a room prepared
  // beside searches is taken only where nothing changed since.
  uint64_t changes_ = 0;
  FlatExport* export_ = nullptr;  // the export in progress, which unregisters itself
  std::unique_ptr<FlatGrowth> growth_;  // BeginGrowth's, until taken or ended
  // Copies into growth_ are made with the index held shared, by GrowStep
  // and by PrepareRoom: one at a time.
  mutable std::mutex growth_mu_;
  Compaction* compaction_ = nullptr;  // likewise
};

// The IVF index that `raw` is, or that a transform in front of it (OPQ, PCA,
// a rotation) passes labels to; null where there is none.
faiss::IndexIVF* LabelledIvf(faiss::Index* raw) {
  if (auto* pre = dynamic_cast<faiss::IndexPreTransform*>(raw)) raw = pre->index;
  return dynamic_cast<faiss::IndexIVF*>(raw);
}

// Every other index is wrapped in an IndexIDMap2, so that add_with_ids and
// reconstruct by label work for all. An IVF index keeps a label with each
// vector, so it takes slots as labels with no id map; so does a transform in
// front of one. Under IndexIDMap2 the latter aborted the process at its
// second removal: FAISS 1.7.3 asserts that the index below renumbers its rows
// after a removal, as flat codes do, and an IVF index does not.
std::unique_ptr<faiss::Index> WithIds(faiss::Index* raw) {
  if (auto* ivf = LabelledIvf(raw)) {
    ivf->set_direct_map_type(faiss::DirectMap::Hashtable);  // reconstruct and O(1) remove by label
    return std::unique_ptr<faiss::Index>(raw);
  }
  auto* map = new faiss::IndexIDMap2(raw);
  map->own_fields = true;
  return std::unique_ptr<faiss::Index>(map);
}

}  // namespace

// Index types that FAISS 1.7.3 builds but that cannot serve a store: each
// failed at its first add or search, an op already in the log, so the store
// failed, and every reopen replayed the op into the same failure. Refused
// before anything is logged, with the reason.
static Status CheckServable(const faiss::Index& idx, const std::string& description) {
  const auto* map = dynamic_cast<const faiss::IndexIDMap2*>(&idx);
  const faiss::Index* inner = map != nullptr ? map->index : &idx;
  const std::string which = "index description '" + description + "': ";
  if (dynamic_cast<const faiss::IndexIDMapTemplate<faiss::Index>*>(inner) != nullptr)
    return Status::InvalidArgument(which + "vecwal maps ids itself; leave out the IDMap prefix");
  if (dynamic_cast<const faiss::IndexNSG*>(inner) != nullptr)
    return Status::InvalidArgument(which + "FAISS's NSG builds its graph once and takes no later adds; use HNSW");
  if (dynamic_cast<const faiss::Index2Layer*>(inner) != nullptr)
    return Status::InvalidArgument(which + "FAISS 1.7.3 cannot search an Index2Layer (Residual...)");
  return Status::OK();
}

Result<std::unique_ptr<VectorIndex>> NewFaissIndex(const IndexSpec& spec) {
  if (spec.dim == 0) return Status::InvalidArgument("dimension must be positive");
  faiss::Index* raw = nullptr;
  VECWAL_RETURN_IF_ERROR(Guard("index description '" + spec.description + "'", [&] {
    raw = faiss::index_factory(static_cast<int>(spec.dim), spec.description.c_str(), ToFaiss(spec.metric));
  }));
  std::unique_ptr<faiss::Index> idx;
  VECWAL_RETURN_IF_ERROR(Guard("index description '" + spec.description + "'", [&] { idx = WithIds(raw); }));
  VECWAL_RETURN_IF_ERROR(CheckServable(*idx, spec.description));
  return std::unique_ptr<VectorIndex>(std::make_unique<FaissIndex>(spec, std::move(idx)));
}

// The table WriteTable writes, parsed and checked: every slot below the next
// slot, no id or slot twice.
Result<SlotTables> ParseSlotTable(std::span<const std::byte> b) {
  size_t pos = 0;
  auto get = [&](uint64_t* v) {
    if (b.size() - pos < 8) return false;
    std::memcpy(v, b.data() + pos, 8);
    pos += 8;
    return true;
  };
  auto bad = [&](const std::string& what) {
    return Status::Corruption("index slot table: " + what + " at byte " + std::to_string(pos));
  };
  SlotTables t;
  uint64_t magic = 0, n = 0, dead = 0;
  if (!get(&magic) || magic != kTableMagic) return bad("bad magic");
  if (!get(&t.next_slot) || !get(&n)) return bad("truncated");
  if (n > b.size() / 16) return bad("live count " + std::to_string(n) + " larger than the table");
  // Sized once: growing an open-addressed table rehashes every entry again.
  t.slot_of.reserve(n);
  t.id_of.reserve(n);
  for (uint64_t i = 0; i < n; ++i) {
    uint64_t slot, id;
    if (!get(&slot) || !get(&id)) return bad("truncated live entry");
    if (slot >= t.next_slot || !t.slot_of.emplace(id, slot).second || !t.id_of.emplace(slot, id).second)
      return bad("inconsistent entry for id " + std::to_string(id));
  }
  if (!get(&dead) || dead > b.size() / 8) return bad("truncated dead count");
  for (uint64_t i = 0; i < dead; ++i) {
    uint64_t slot;
    if (!get(&slot)) return bad("truncated dead entry");
    if (slot >= t.next_slot || t.id_of.count(slot) || !t.dead.insert(slot).second)
      return bad("inconsistent dead slot " + std::to_string(slot));
  }
  if (pos != b.size()) return bad("trailing bytes");
  return t;
}

Result<std::unique_ptr<VectorIndex>> AdoptLoadedFlat(const IndexSpec& spec, std::unique_ptr<faiss::IndexIDMap2> map,
                                                     SlotTables slots) {
  auto fi = std::make_unique<FaissIndex>(spec, std::move(map), FaissIndex::Removable{});
  VECWAL_RETURN_IF_ERROR(fi->AdoptTable(std::move(slots)));
  return std::unique_ptr<VectorIndex>(std::move(fi));
}

// A checkpoint written before WithIds kept transforms in front of IVF out of
// IndexIDMap2 holds one inside it. Its IVF labels were the map's row
// numbers, until a removal: the map then closed up its rows and the labels
// did not follow (the next removal aborted). Where the labels are still
// exactly the rows, each becomes the slot its row holds and the map goes;
// where they are not, which label is which id is lost, and the load fails
// rather than serve wrong ids (the previous checkpoint may predate it).
static Status DropIdMapOverIvf(std::unique_ptr<faiss::Index>& idx) {
  auto* map = dynamic_cast<faiss::IndexIDMap2*>(idx.get());
  faiss::IndexIVF* ivf = map != nullptr ? LabelledIvf(map->index) : nullptr;
  if (ivf == nullptr) return Status::OK();
  auto* lists = dynamic_cast<faiss::ArrayInvertedLists*>(ivf->invlists);
  if (lists == nullptr)
    return Status::NotSupported("stored IVF index behind an id map keeps its lists outside memory; cannot relabel it");
  const size_t rows = map->id_map.size();
  std::vector<bool> seen(rows, false);
  size_t entries = 0;
  for (const auto& list : lists->ids)
    for (faiss::Index::idx_t label : list) {
      ++entries;
      if (label < 0 || static_cast<size_t>(label) >= rows || seen[static_cast<size_t>(label)])
        return Status::Corruption("stored IVF index behind an id map has label " + std::to_string(label) +
                                  (label >= 0 && static_cast<size_t>(label) < rows ? " twice" : " past its rows") +
                                  ": its labels no longer match the map's " + std::to_string(rows) +
                                  " rows (a removal under an older vecwal lost them), so its vectors' ids are unknown");
      seen[static_cast<size_t>(label)] = true;
    }
  if (entries != rows)
    return Status::Corruption("stored IVF index behind an id map holds " + std::to_string(entries) +
                              " vectors against the map's " + std::to_string(rows) + " rows");
  for (auto& list : lists->ids)
    for (auto& label : list) label = map->id_map[static_cast<size_t>(label)];
  return Guard("relabelling a stored IVF index", [&] {
    ivf->set_direct_map_type(faiss::DirectMap::Hashtable);
    faiss::Index* inner = map->index;
    map->own_fields = false;
    idx.reset(inner);
  });
}

size_t SearchThreads() { return static_cast<size_t>(std::max(omp_get_max_threads(), 1)); }

FaissThreadCap::FaissThreadCap(size_t threads) {
  const int now = omp_get_max_threads();
  if (threads == 0 || threads >= static_cast<size_t>(now)) return;
  saved_ = now;
  omp_set_num_threads(static_cast<int>(threads));
}

FaissThreadCap::~FaissThreadCap() {
  if (saved_ != 0) omp_set_num_threads(saved_);
}

Result<std::unique_ptr<VectorIndex>> LoadFaissIndex(const IndexSpec& spec, std::span<const std::byte> bytes) {
  SpanReader r(bytes);
  std::unique_ptr<faiss::Index> idx;
  VECWAL_RETURN_IF_ERROR(Guard("loading a FAISS index", [&] { idx.reset(faiss::read_index(&r)); }));
  if (idx->d != static_cast<faiss::Index::idx_t>(spec.dim))
    return Status::InvalidArgument("stored index has dimension " + std::to_string(idx->d) + ", expected " +
                                   std::to_string(spec.dim));
  if (idx->metric_type != ToFaiss(spec.metric))
    return Status::InvalidArgument(std::string("stored index has another metric than ") + ToString(spec.metric));
  VECWAL_RETURN_IF_ERROR(DropIdMapOverIvf(idx));
  auto fi = std::make_unique<FaissIndex>(spec, std::move(idx));
  VECWAL_ASSIGN_OR_RETURN(SlotTables t, ParseSlotTable(bytes.subspan(r.pos)));
  VECWAL_RETURN_IF_ERROR(fi->AdoptTable(std::move(t)));
  return std::unique_ptr<VectorIndex>(std::move(fi));
}

}  // namespace vecwal::index
