// VectorIndex: the index interface the durable layer applies the log to,
// and its FAISS CPU backend.
//
// Ids are stable u64s chosen by the user. Inside, each added vector gets a
// slot (a u64 that only grows) and FAISS labels vectors by slot, so an update
// (remove, then add under the same id) never leaves two vectors FAISS cannot
// tell apart. Where FAISS can remove vectors (Flat, IVF, PQ, ...) removal is
// physical; where it cannot (HNSW) the slot becomes a tombstone, filtered at
// search, until a compaction rebuilds the index without them.
//
// Designed for the GPU backend that follows: adds take whole batches from a
// caller's buffer (pinned memory there), and the serialized index is written
// in chunks through a sink, so a checkpoint never holds a second copy.
//
// Thread safety: Search and the const accessors may run concurrently with
// each other; Train, Add, Remove and Compact need exclusive access (the
// durable layer holds a reader-writer lock).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "index/id_table.h"
#include "io/status.h"

namespace vecwal::index {

enum class Metric : uint8_t { kL2 = 0, kInnerProduct = 1 };
const char* ToString(Metric m);
Result<Metric> ParseMetric(const std::string& s);

struct IndexSpec {
  uint32_t dim = 0;
  Metric metric = Metric::kL2;
  std::string description = "Flat";  // any faiss::index_factory string
};

inline constexpr uint64_t kNoId = ~0ull;

// InvalidArgument naming the first NaN or infinite component of `rows` (dim
// floats each), as "<name(row)>: component <c> is NaN" (or "infinite"); OK
// where every one is finite. FAISS takes such vectors, queries and training
// samples without a word and answers nonsense.
Status CheckFinite(std::span<const float> rows, size_t dim, const std::function<std::string(size_t row)>& name);

// InvalidArgument where nq x k results (an id and a distance each) would not
// fit in this machine's memory, or in a size_t: a k meant as "all of them"
// (SIZE_MAX, 2^40) would otherwise end in std::bad_alloc, or in a crash
// where the allocator aborts instead (sanitizers). Rows past the index's
// size are padding, so a k above it is fine while its padding fits.
Status CheckResultSize(size_t nq, size_t k);

// How hard an approximate index searches, per call. 0 leaves the index's
// own setting (FAISS's defaults: nprobe 1, efSearch 16, which at 1M vectors
// find a small share of the true neighbours). A knob the index has no part
// for is an error (CheckSearchParams), not ignored: an nprobe meant for IVF
// that an HNSW index dropped would look like a recall bug.
struct SearchParams {
  size_t nprobe = 0;     // IVF: inverted lists probed per query (at most the lists it has)
  size_t ef_search = 0;  // HNSW, or an IVF's HNSW quantizer: candidates kept on the graph
  // Only ids it says true of are searched (empty: every id): a tenant's, a
  // document's. FAISS asks it of each candidate as it searches (IDSelector),
  // from several threads at once, so it must be thread-safe and cheap (a
  // bitmap, a hash set). A Flat index then scans without BLAS, and an
  // approximate one may find fewer than k of a small share of the ids, as
  // FAISS does. Hits are checked against it again: FAISS 1.7.3's L2 search
  // for k = 1 answers row 0 where it passes no row, and an index FAISS
  // searched without it would return fewer hits, never one it refuses.
  std::function<bool(uint64_t id)> filter;
  // Only these ids are searched, where set (an empty list: none; ids not in
  // the index, and repeats, are passed over): a document's chunks, a
  // tenant's rows. Looked up once a call into a mask of the index's rows,
  // so each candidate costs a load, as FAISS's own IDSelectorBitmap does; a
  // list of a few ids costs what they do, a predicate what the index holds.
  // With a filter as well, an id must pass both. The list must outlive the call.
  std::optional<std::span<const uint64_t>> ids;
};

// Row-major, nq x k; rows with fewer than k hits end in kNoId.
struct SearchResults {
  size_t nq = 0, k = 0;
  std::vector<uint64_t> ids;
  std::vector<float> distances;
};

using ByteSink = std::function<Status(std::span<const std::byte>)>;

// What Serialize would write at the moment the export began, produced later
// in pieces while writes go on: the backend keeps, as they were, the vectors
// that change before the export has written them (copy on write). Begun in
// the time it takes to copy the id tables, not the vectors, so a checkpoint
// need not stop writers while it copies the whole index.
//
// Thread safety: the owner calls Next with the index held shared (no add or
// remove meanwhile), and destroys the export with it held exclusively, before
// the index.
class IndexExport {
 public:
  virtual ~IndexExport() = default;
  // Writes the next bytes into `room`, filling it unless fewer are left, and
  // returns how many it wrote: less than room.size() only at the end, 0 once
  // all is written. `room` is where the bytes go next (a checkpoint's staging
  // buffer), so the vectors are copied once.
  virtual Result<size_t> Next(std::span<std::byte> room) = 0;
};

// A rebuild of an index without its tombstones, in steps, so that the long
// part (adding every live vector to a new graph: as long as building the
// index took) holds nothing, and writes and searches go on beside it.
// Ends with VectorIndex::FinishCompaction, which catches the new index up
// with the adds and removes made since it began.
//
// Thread safety: the owner calls CopyNext with the index held shared, and
// destroys an unfinished compaction with it held exclusively, before the
// index; AddCopied touches only the new index.
class IndexCompaction {
 public:
  virtual ~IndexCompaction() = default;
  // Copies the next live vectors (a few MB); false once every one is copied.
  virtual Result<bool> CopyNext() = 0;
  // Adds what CopyNext copied to the new index.
  virtual Status AddCopied() = 0;
};

// Room made ahead for adds (see VectorIndex::PrepareRoom): storage the
// index will move to, with its vectors copied in. Destroyed after the index
// is released: once taken, it holds the old storage, which it frees.
class IndexRoom {
 public:
  virtual ~IndexRoom() = default;
};

class VectorIndex {
 public:
  virtual ~VectorIndex() = default;
  virtual const IndexSpec& spec() const = 0;
  // False for IVF/PQ descriptions until Train has run.
  virtual bool is_trained() const = 0;
  // `sample` holds n x dim floats.
  virtual Status Train(std::span<const float> sample) = 0;
  // Adds ids.size() vectors (ids.size() x dim floats). Every id must be new
  // to the index: the caller removes an id before re-adding it.
  virtual Status Add(std::span<const uint64_t> ids, std::span<const float> vectors) = 0;
  // The same, with vector i where rows[i] points (dim float32s, any
  // alignment) rather than in one array: replay adds vectors straight from
  // the log's read buffers, copying each once. This default packs them
  // into one array for Add.
  virtual Status AddRows(std::span<const uint64_t> ids, std::span<const std::byte* const> rows);
  // Removes the ids that are present; absent ones are ignored.
  virtual Status Remove(std::span<const uint64_t> ids) = 0;
  // `queries` holds nq x dim floats. Ids in `skip` (null: none) are left
  // out, and each query still gets the k best of the rest: a caller that
  // holds newer versions of some ids (the recent writes) asks for k, not for
  // k more per id.
  virtual Result<SearchResults> Search(std::span<const float> queries, size_t k, const IdSet* skip,
                                       const SearchParams& params) const = 0;
  Result<SearchResults> Search(std::span<const float> queries, size_t k, const IdSet* skip) const {
    return Search(queries, k, skip, SearchParams{});
  }
  Result<SearchResults> Search(std::span<const float> queries, size_t k) const { return Search(queries, k, nullptr); }
  // InvalidArgument, naming the knob and the index, where `params` sets one
  // that this index has no part for; Search checks the same.
  virtual Status CheckSearchParams(const SearchParams& params) const = 0;
  // The fewest queries a search should take at once, where fewer cost more
  // each: FAISS's Flat computes distances query by query below
  // faiss::distance_compute_blas_threshold (20) queries a call and by one BLAS
  // product from there (20k x 768-d: 8.8 ms a query against about 1), and so
  // does an IVF index's Flat quantizer. 1 where a call's queries cost the
  // same each, however many.
  virtual size_t SearchBatchFloor() const { return 1; }
  // Where searches run, for a store's Stats and an operator's logs: "cpu"
  // here; a GPU mirror names its card, or says why it went back to the CPU.
  virtual std::string SearchedOn() const { return "cpu"; }
  virtual bool Contains(uint64_t id) const = 0;
  // The stored vector (exact for Flat and HNSW; decoded for PQ/SQ codes).
  virtual Result<std::vector<float>> Reconstruct(uint64_t id) const = 0;
  virtual size_t size() const = 0;        // live vectors
  virtual size_t tombstones() const = 0;  // removed but still inside FAISS
  // Vectors the storage holds before an add must move it (live, tombstoned
  // and room); size() + tombstones() where the backend keeps no such room.
  virtual size_t capacity() const { return size() + tombstones(); }
  // Makes room for `n` vectors in all, where the backend can: replay into
  // pre-sized storage instead of growing by doubling (which copies the whole
  // index and holds two copies at once). Untouched reserved pages cost no RSS.
  virtual void Reserve(size_t n) = 0;
  // Room for `more` vectors past those held, made with the index held
  // shared, so that the adds that follow hold it exclusively for their
  // copies only. A Flat index's adds write into pages the process has never
  // touched, and the kernel's faults and zeroing cost more than the copy
  // (this VM: 5 us a 768-d row in all); those pages are faulted in here.
  // Where the adds would outgrow the storage, which then doubles (a copy of
  // the whole index, which held searches back for about a second a GB),
  // the bigger storage is made and filled here and returned; TakeRoom, with
  // the index held exclusively, puts it in place, unless the index changed
  // since (the adds then grow the storage themselves, as without it). Null
  // where nothing moves. Concurrent calls are the caller's to prevent.
  virtual std::unique_ptr<IndexRoom> PrepareRoom(size_t more) const {
    (void)more;
    return nullptr;
  }
  virtual void TakeRoom(IndexRoom& room) { (void)room; }
  // Storage grown beside the writes, where PrepareRoom's copy of a big
  // storage, made at once, would hold back the adds waiting for it (a Flat
  // store's writers waited 1.9 s for one doubling of 768 MB here). A growth
  // begins early, is copied in steps between the writes, and is put in place
  // once whole, with what changed since copied again.
  // BeginGrowth (held exclusively): begins one where the storage, of at
  // least `min_bytes`, is half full; whether one is under way.
  virtual bool BeginGrowth(size_t min_bytes) {
    (void)min_bytes;
    return false;
  }
  // GrowStep (held shared): faults in and copies about `bytes` more of the
  // growth; false once it is whole or gone (a storage that grew by itself
  // meanwhile ends it). A PrepareRoom whose adds the storage cannot hold
  // finishes the growth instead of making a room.
  virtual bool GrowStep(size_t bytes) {
    (void)bytes;
    return false;
  }
  // TakeGrowth (held exclusively): puts a whole growth in place; returns the
  // old storage, for the caller to free after the hold. Null where none was
  // whole.
  virtual std::unique_ptr<IndexRoom> TakeGrowth() { return nullptr; }
  // Begins a compaction (see IndexCompaction), or returns null when there
  // are no tombstones. Needs exclusive access; one at a time.
  virtual Result<std::unique_ptr<IndexCompaction>> BeginCompaction() = 0;
  // Adds what changed since `c` began to its new index and puts that in
  // place of this one. Needs exclusive access. On an error this index is
  // left as it was.
  virtual Status FinishCompaction(std::unique_ptr<IndexCompaction> c) = 0;
  // All of a compaction at once; a no-op when there are no tombstones.
  Status Compact();
  // Writes the FAISS index (loadable by faiss::read_index; labels are slots)
  // and then the slot -> id table, through `sink`, in pieces.
  virtual Status Serialize(const ByteSink& sink) const = 0;
  // Every live vector, in pieces of at most `rows_per_piece`: the ids and
  // their vectors (ids.size() x dim floats, as stored: decoded for PQ/SQ),
  // valid for the call only. For copying the index elsewhere (gpu/'s device
  // mirror). Needs the index held shared. NotSupported where the backend
  // cannot list its vectors.
  using LiveVisitor = std::function<Status(std::span<const uint64_t> ids, std::span<const float> vectors)>;
  virtual Status ScanLive(size_t rows_per_piece, const LiveVisitor& visit) const;
  // Begins an export (see IndexExport), or returns null where the backend
  // keeps none (a caller then copies through Serialize). Needs exclusive
  // access; one export at a time.
  virtual Result<std::unique_ptr<IndexExport>> BeginExport() = 0;
};

// Builds an index from what Serialize wrote, fed in order and in pieces,
// placing the vectors straight into the index's own storage: no copy of the
// whole serialized form in memory, and no zero-filled storage (FAISS's own
// reader zero-fills its vectors before it copies into them: at 1M x 768-d
// that was most of a load). The caller verifies the bytes' checksum before
// it calls Finish; nothing a loader builds is used before that.
class IndexLoader {
 public:
  virtual ~IndexLoader() = default;
  virtual Status Feed(std::span<const std::byte> piece) = 0;
  // Where the bytes after the vectors begin (ids and tables: at 1M vectors
  // 24 MB, whose tables took 0.4 s to build once the 3 GB before them had
  // streamed). A caller may read them first and give them to FeedTail, before
  // the Feed that reaches them, so that the tables are built while the
  // vectors stream. Feed still gets every byte, in order; a tail byte that
  // differs from FeedTail's is Corruption.
  virtual uint64_t tail_offset() const = 0;
  virtual Status FeedTail(std::span<const std::byte> tail) = 0;
  virtual Result<std::unique_ptr<VectorIndex>> Finish() = 0;
};
inline constexpr size_t kLoaderHeadBytes = 4096;
// A loader for bytes of `total` length that begin with `head` (their first
// kLoaderHeadBytes, or all of them); null where their layout is not one it
// places directly (then load through LoadFaissIndex).
std::unique_ptr<IndexLoader> NewIndexLoader(const IndexSpec& spec, std::span<const std::byte> head, uint64_t total);

// The k rows nearest each query, exactly, by the kernels FAISS's Flat
// search uses (query by query below faiss::distance_compute_blas_threshold
// queries, one BLAS product from there; queries in parallel), so that its
// distances merge with a Flat index's own. `distances` and `found` receive
// nq x k values, best first; a query's places past the n rows hold row -1.
// For searching a few thousand vectors beside an index. Where distances tie
// at the k-th place, which of the tied rows is kept is FAISS's choice.
// `only` (empty: every row): a byte a row, nonzero for the rows to search;
// FAISS then compares those alone, query by query.
void ExactKnn(const IndexSpec& spec, std::span<const float> queries, std::span<const float> rows, size_t k,
              std::span<float> distances, std::span<int64_t> found, std::span<const uint8_t> only = {});
// Whether distance `a` ranks before `b` under `m`: smaller L2, larger inner product.
inline bool Closer(Metric m, float a, float b) { return m == Metric::kInnerProduct ? a > b : a < b; }

// How many queries FAISS searches at once: its OpenMP threads (one a query).
size_t SearchThreads();

// While it lives, the FAISS calls made on the constructing thread (its
// training, adds, searches) use at most `threads` OpenMP threads; 0, or more
// than they would use: no cap. A long build beside a store in service (a
// reindex) leaves the other cores to its writers and merges. One thread's
// setting: other threads' calls are not capped.
class FaissThreadCap {
 public:
  explicit FaissThreadCap(size_t threads);
  ~FaissThreadCap();
  FaissThreadCap(const FaissThreadCap&) = delete;
  FaissThreadCap& operator=(const FaissThreadCap&) = delete;

 private:
  int saved_ = 0;  // 0: nothing to restore
};

Result<std::unique_ptr<VectorIndex>> NewFaissIndex(const IndexSpec& spec);
// Loads what Serialize wrote for an index of `spec`.
Result<std::unique_ptr<VectorIndex>> LoadFaissIndex(const IndexSpec& spec, std::span<const std::byte> bytes);

}  // namespace vecwal::index
