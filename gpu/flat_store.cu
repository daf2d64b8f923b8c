#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "gpu/cuda_status.h"
#include "gpu/device.h"
#include "gpu/flat_store.h"

namespace vecwal::gpu {
namespace {

constexpr int kThreads = 128;  // the selection kernel's block
constexpr uint32_t kNoRow = 0xffffffffu;
constexpr size_t kStageBytes = 8 << 20;          // each of the two pinned staging buffers
constexpr size_t kProductFloats = 64ull << 20;   // the queries x rows product of one tile: 256 MB
constexpr size_t kQueryBatch = 1024;             // queries a product takes at once
constexpr size_t kSliceRowsFloor = 2048;         // rows one block selects from, at least

std::string Str(size_t v) { return std::to_string(v); }

// Pinned host memory: copies from it run at the bus's speed and leave the
// host thread free; cudaMemcpyAsync from pageable memory does neither.
struct FreePinned {
  void operator()(std::byte* p) const { cudaFreeHost(p); }
};
using PinnedBuffer = std::unique_ptr<std::byte, FreePinned>;

Result<PinnedBuffer> AllocatePinned(size_t bytes) {
  void* p = nullptr;
  VECWAL_RETURN_IF_ERROR(FromCuda(cudaHostAlloc(&p, bytes, cudaHostAllocDefault), "cudaHostAlloc (pinned staging)"));
  return PinnedBuffer(static_cast<std::byte*>(p));
}

struct DestroyEvent {
  void operator()(cudaEvent_t e) const { cudaEventDestroy(e); }
};
using Event = std::unique_ptr<std::remove_pointer_t<cudaEvent_t>, DestroyEvent>;

Result<Event> CreateEvent() {
  cudaEvent_t e = nullptr;
  VECWAL_RETURN_IF_ERROR(FromCuda(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate"));
  return Event(e);
}

struct DestroyCublas {
  void operator()(cublasHandle_t h) const { cublasDestroy(h); }
};
using Cublas = std::unique_ptr<std::remove_pointer_t<cublasHandle_t>, DestroyCublas>;

Result<Cublas> CreateCublas(cudaStream_t s) {
  cublasHandle_t h = nullptr;
  VECWAL_RETURN_IF_ERROR(FromCublas(cublasCreate(&h), "cublasCreate"));
  Cublas owned(h);
  VECWAL_RETURN_IF_ERROR(FromCublas(cublasSetStream(h, s), "cublasSetStream"));
  // FP32 products: TF32 would round q.x to 10 bits of mantissa, and a
  // store's answers would differ from a CPU Flat index's.
  VECWAL_RETURN_IF_ERROR(FromCublas(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH), "cublasSetMathMode"));
  return Result<Cublas>(std::move(owned));
}

// |row|^2 of n rows of dim floats, one warp a row.
__global__ void SquaredNormsKernel(const float* rows, size_t n, uint32_t dim, float* out) {
  const size_t row = (blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x) / 32;
  const unsigned lane = threadIdx.x % 32;
  if (row >= n) return;
  const float* r = rows + row * dim;
  float s = 0.f;
  for (uint32_t i = lane; i < dim; i += 32) s += r[i] * r[i];
  for (int o = 16; o > 0; o /= 2) s += __shfl_down_sync(0xffffffffu, s, o);
  if (lane == 0) out[row] = s;
}

Status SquaredNorms(const float* rows, size_t n, uint32_t dim, float* out, cudaStream_t s) {
  if (n == 0) return Status::OK();
  const size_t threads = n * 32;
  SquaredNormsKernel<<<static_cast<unsigned>((threads + 255) / 256), 256, 0, s>>>(rows, n, dim, out);
  return FromCuda(cudaGetLastError(), "SquaredNormsKernel launch");
}

// Row m.to <- row m.from for each move, one block a move. CheckMoves put
// every destination below every source, so no block reads a row another
// writes, and the blocks may run in any order.
__global__ void MoveRowsKernel(const RowMove* moves, uint32_t dim, float* vectors, float* norms) {
  const RowMove m = moves[blockIdx.x];
  const float* from = vectors + m.from * dim;
  float* to = vectors + m.to * dim;
  for (uint32_t i = threadIdx.x; i < dim; i += blockDim.x) to[i] = from[i];
  if (threadIdx.x == 0) norms[m.to] = norms[m.from];
}

__global__ void SetMaskKernel(uint8_t* mask, const uint64_t* rows, size_t n, uint8_t value) {
  const size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (i < n) mask[rows[i]] = value;
}

Status SetMask(uint8_t* mask, const uint64_t* rows, size_t n, uint8_t value, cudaStream_t s) {
  if (n == 0) return Status::OK();
  SetMaskKernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, s>>>(mask, rows, n, value);
  return FromCuda(cudaGetLastError(), "SetMaskKernel launch");
}

// --- Selection -------------------------------------------------------------
// A block keeps one query's best K2 (k rounded up to a power of two, at
// least four blocks) in shared memory, sorted by key (an L2 distance, or minus
// an inner product: smaller is better), and a pending area of K2 beside it.
// Each round, every thread takes one candidate and appends it to pending if
// it beats the k-th best so far; once pending may not hold another round,
// both halves are sorted together (bitonic) and the better half kept.

struct SelectShared {
  float* keys;     // 2 x K2: best, then pending
  uint32_t* rows;  // the same places
  int* count;      // entries in pending
};

__device__ SelectShared Carve(int k2) {
  extern __shared__ float smem[];
  SelectShared s;
  s.keys = smem;
  s.rows = reinterpret_cast<uint32_t*>(smem + 2 * k2);
  s.count = reinterpret_cast<int*>(s.rows + 2 * k2);
  return s;
}

size_t SharedBytes(int k2) { return 2 * static_cast<size_t>(k2) * (sizeof(float) + sizeof(uint32_t)) + 16; }

__device__ void BitonicSort(float* keys, uint32_t* rows, int n) {
  for (int size = 2; size <= n; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const int j = i ^ stride;
        if (j <= i) continue;
        const bool ascending = (i & size) == 0;
        const float a = keys[i], b = keys[j];
        if ((a > b) == ascending) {
          keys[i] = b;
          keys[j] = a;
          const uint32_t r = rows[i];
          rows[i] = rows[j];
          rows[j] = r;
        }
      }
      __syncthreads();
    }
  }
}

// Every thread calls this, having read `pending` (the count) after a barrier.
__device__ void MergePending(const SelectShared& s, int k2, int pending) {
  for (int i = pending + threadIdx.x; i < k2; i += blockDim.x) {
    s.keys[k2 + i] = INFINITY;
    s.rows[k2 + i] = kNoRow;
  }
  __syncthreads();
  BitonicSort(s.keys, s.rows, 2 * k2);
  if (threadIdx.x == 0) *s.count = 0;
  __syncthreads();
}

// Selects from candidates [begin, end) of `cand` into the list at
// (g_key, g_row) (K2 entries; empty where `fresh`).
template <class Candidates>
__device__ void SelectRange(int k2, int k, float* g_key, uint32_t* g_row, bool fresh, size_t begin, size_t end,
                            const Candidates& cand) {
  const SelectShared s = Carve(k2);
  for (int i = threadIdx.x; i < k2; i += blockDim.x) {
    s.keys[i] = fresh ? INFINITY : g_key[i];
    s.rows[i] = fresh ? kNoRow : g_row[i];
  }
  if (threadIdx.x == 0) *s.count = 0;
  __syncthreads();
  float worst = s.keys[k - 1];
  for (size_t base = begin; base < end; base += blockDim.x) {
    const size_t j = base + threadIdx.x;
    float key;
    uint32_t row;
    // NaN (a product that overflowed) compares false and is never kept.
    if (j < end && cand(j, key, row) && key < worst) {
      const int at = atomicAdd(s.count, 1);
      s.keys[k2 + at] = key;
      s.rows[k2 + at] = row;
    }
    __syncthreads();
    const int pending = *s.count;
    __syncthreads();  // every thread has read the count before the next round adds to it
    if (pending > k2 - static_cast<int>(blockDim.x)) {
      MergePending(s, k2, pending);
      worst = s.keys[k - 1];
    }
  }
  const int pending = *s.count;
  __syncthreads();
  if (pending > 0) MergePending(s, k2, pending);
  for (int i = threadIdx.x; i < k2; i += blockDim.x) {
    g_key[i] = s.keys[i];
    g_row[i] = s.rows[i];
  }
}

// Candidates from one tile's products: line[j] = q . x(row0 + j).
struct ProductCandidates {
  const float* line;
  const float* row_norms;  // of every row
  const uint8_t* mask;     // of every row, or null
  size_t row0;
  float query_norm;
  bool l2;
  __device__ bool operator()(size_t j, float& key, uint32_t& row) const {
    const size_t r = row0 + j;
    if (mask != nullptr && mask[r] == 0) return false;
    const float ip = line[j];
    key = l2 ? fmaxf(query_norm + row_norms[r] - 2.f * ip, 0.f) : -ip;
    row = static_cast<uint32_t>(r);
    return true;
  }
};

// Grid: (query, slice). Each slice of the tile's rows keeps its own list.
__global__ void SelectTileKernel(const float* products, size_t tile_rows, size_t row0, const float* query_norms,
                                 const float* row_norms, const uint8_t* mask, bool l2, int k2, int k, float* st_key,
                                 uint32_t* st_row, bool fresh) {
  const size_t q = blockIdx.x, slice = blockIdx.y, slices = gridDim.y;
  const size_t per = (tile_rows + slices - 1) / slices;
  const size_t begin = slice * per < tile_rows ? slice * per : tile_rows;
  const size_t end = begin + per < tile_rows ? begin + per : tile_rows;
  const size_t at = (q * slices + slice) * static_cast<size_t>(k2);
  ProductCandidates c{products + q * tile_rows, row_norms, mask, row0, l2 ? query_norms[q] : 0.f, l2};
  SelectRange(k2, k, st_key + at, st_row + at, fresh, begin, end, c);
}

// Candidates from the slices' lists of one query: the first k of each
// (K2 apart), the rest of a list being no better than its k-th.
struct ListCandidates {
  const float* keys;
  const uint32_t* rows;
  int k, k2;
  __device__ bool operator()(size_t j, float& key, uint32_t& row) const {
    const size_t at = (j / k) * k2 + j % k;
    row = rows[at];
    key = keys[at];
    return row != kNoRow;
  }
};

__global__ void MergeSlicesKernel(const float* st_key, const uint32_t* st_row, int slices, int k2, int k,
                                  float* out_key, uint32_t* out_row) {
  const size_t q = blockIdx.x;
  const size_t from = q * slices * static_cast<size_t>(k2);
  ListCandidates c{st_key + from, st_row + from, k, k2};
  SelectRange(k2, k, out_key + q * k2, out_row + q * k2, true, 0, static_cast<size_t>(slices) * k, c);
}

int RoundUpPow2(size_t v) {
  int p = 1;
  while (static_cast<size_t>(p) < v) p <<= 1;
  return p;
}

}  // namespace

struct DeviceFlatStore::Impl {
  int device = 0;
  uint32_t dim = 0;
  bool inner_product = false;
  int multiprocessors = 1;
  std::mutex mu;
  CudaStream stream;
  Cublas blas;
  PinnedBuffer stage[2];
  Event staged[2];  // the copy out of stage[i] has finished
  DeviceBuffer vectors, norms;
  size_t rows = 0, capacity = 0;
  // Search scratch, kept between calls and grown as needed.
  DeviceBuffer queries, query_norms, products, st_key, st_row, out_key, out_row, mask, skips, moves;
  // A byte of 1 a row, for searches that skip rows but filter none: they
  // clear their skipped rows' bytes and set them again after. False while
  // a search has bytes cleared, and after one that failed between the two:
  // the next search fills it again.
  DeviceBuffer ones;
  bool ones_whole = false;

  explicit Impl(CudaStream s) : stream(std::move(s)) {}
  cudaStream_t st() const { return Native(stream.native()); }
  size_t row_bytes() const { return static_cast<size_t>(dim) * sizeof(float); }

  Status Use() { return FromCuda(cudaSetDevice(device), "cudaSetDevice"); }

  static Status Ensure(DeviceBuffer& b, size_t bytes) {
    if (b.size() >= bytes) return Status::OK();
    b = DeviceBuffer();  // free first: the old and new scratch need not coexist
    VECWAL_ASSIGN_OR_RETURN(b, DeviceBuffer::Allocate(std::max<size_t>(bytes, 256)));
    return Status::OK();
  }

  Status Grow(size_t want) {
    if (want <= capacity) return Status::OK();
    if (want >= kNoRow)
      return Status::InvalidArgument("a GPU flat store holds fewer than 2^32 - 1 rows; asked for " + Str(want));
    auto v = DeviceBuffer::Allocate(want * row_bytes());
    if (!v.ok())
      return Status::NoSpace("GPU memory for " + Str(want) + " rows of " + Str(dim) + " floats (" +
                             Str(want * row_bytes() >> 20) + " MiB): " + v.status().ToString());
    auto n = DeviceBuffer::Allocate(want * sizeof(float));
    if (!n.ok()) return n.status();
    if (rows > 0) {
      VECWAL_RETURN_IF_ERROR(FromCuda(
          cudaMemcpyAsync(v->data(), vectors.data(), rows * row_bytes(), cudaMemcpyDeviceToDevice, st()),
          "cudaMemcpyAsync (growing the GPU store)"));
      VECWAL_RETURN_IF_ERROR(FromCuda(
          cudaMemcpyAsync(n->data(), norms.data(), rows * sizeof(float), cudaMemcpyDeviceToDevice, st()),
          "cudaMemcpyAsync (growing the GPU store)"));
      VECWAL_RETURN_IF_ERROR(stream.Synchronize());
    }
    vectors = std::move(*v);
    norms = std::move(*n);
    capacity = want;
    return Status::OK();
  }

  // Copies host bytes to the card through the two pinned buffers in turn:
  // a copy from pageable memory would hold the host thread until it is done.
  Status Upload(void* to, const void* from, size_t bytes) {
    for (size_t done = 0, i = 0; done < bytes; done += kStageBytes, ++i) {
      const size_t b = i % 2, count = std::min(kStageBytes, bytes - done);
      VECWAL_RETURN_IF_ERROR(FromCuda(cudaEventSynchronize(staged[b].get()), "cudaEventSynchronize (staging)"));
      std::memcpy(stage[b].get(), static_cast<const std::byte*>(from) + done, count);
      VECWAL_RETURN_IF_ERROR(FromCuda(cudaMemcpyAsync(static_cast<std::byte*>(to) + done, stage[b].get(), count,
                                                      cudaMemcpyHostToDevice, st()),
                                      "cudaMemcpyAsync (upload)"));
      VECWAL_RETURN_IF_ERROR(FromCuda(cudaEventRecord(staged[b].get(), st()), "cudaEventRecord"));
    }
    return Status::OK();
  }

  // The rows a search selects from: null for all, else a byte a row on the
  // card. `restore` is set where the mask of ones must get its bytes back.
  Result<const uint8_t*> SearchMask(const RowFilter& which, bool& restore) {
    restore = false;
    if (which.keep == nullptr && which.skipped == 0) return static_cast<const uint8_t*>(nullptr);
    const uint64_t* skips = nullptr;
    if (which.skipped > 0) {
      VECWAL_RETURN_IF_ERROR(Ensure(this->skips, which.skipped * sizeof(uint64_t)));
      VECWAL_RETURN_IF_ERROR(Upload(this->skips.data(), which.skip, which.skipped * sizeof(uint64_t)));
      skips = static_cast<const uint64_t*>(this->skips.data());
    }
    if (which.keep != nullptr) {  // a mask of this search's own
      VECWAL_RETURN_IF_ERROR(Ensure(mask, rows));
      VECWAL_RETURN_IF_ERROR(Upload(mask.data(), which.keep, rows));
      auto* m = static_cast<uint8_t*>(mask.data());
      VECWAL_RETURN_IF_ERROR(SetMask(m, skips, which.skipped, 0, st()));
      return static_cast<const uint8_t*>(m);
    }
    if (!ones_whole || ones.size() < rows) {
      VECWAL_RETURN_IF_ERROR(Ensure(ones, capacity));
      VECWAL_RETURN_IF_ERROR(FromCuda(cudaMemsetAsync(ones.data(), 1, ones.size(), st()), "cudaMemsetAsync (mask)"));
    }
    ones_whole = false;
    auto* m = static_cast<uint8_t*>(ones.data());
    VECWAL_RETURN_IF_ERROR(SetMask(m, skips, which.skipped, 0, st()));
    restore = true;
    return static_cast<const uint8_t*>(m);
  }

  // Appends n rows; `pack(first, count, dst)` writes rows [first, first +
  // count) into pinned memory at dst. Rows become visible only once every
  // copy and their norms are done.
  template <class Pack>
  Status AppendWith(size_t n, const Pack& pack) {
    if (n == 0) return Status::OK();
    VECWAL_RETURN_IF_ERROR(Use());
    if (rows + n > capacity) VECWAL_RETURN_IF_ERROR(Grow(std::max(rows + n, std::min<size_t>(2 * capacity, kNoRow - 1))));
    const size_t per = std::max<size_t>(1, kStageBytes / row_bytes());
    auto* dst = static_cast<std::byte*>(vectors.data()) + rows * row_bytes();
    for (size_t done = 0, i = 0; done < n; done += per, ++i) {
      const size_t b = i % 2, count = std::min(per, n - done);
      VECWAL_RETURN_IF_ERROR(FromCuda(cudaEventSynchronize(staged[b].get()), "cudaEventSynchronize (staging)"));
      pack(done, count, stage[b].get());
      VECWAL_RETURN_IF_ERROR(FromCuda(cudaMemcpyAsync(dst + done * row_bytes(), stage[b].get(), count * row_bytes(),
                                                      cudaMemcpyHostToDevice, st()),
                                      "cudaMemcpyAsync (adding rows)"));
      VECWAL_RETURN_IF_ERROR(FromCuda(cudaEventRecord(staged[b].get(), st()), "cudaEventRecord"));
    }
    VECWAL_RETURN_IF_ERROR(SquaredNorms(static_cast<const float*>(vectors.data()) + rows * dim, n, dim,
                                        static_cast<float*>(norms.data()) + rows, st()));
    VECWAL_RETURN_IF_ERROR(stream.Synchronize());
    rows += n;
    return Status::OK();
  }
};

DeviceFlatStore::DeviceFlatStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DeviceFlatStore::~DeviceFlatStore() = default;

Result<std::unique_ptr<DeviceFlatStore>> DeviceFlatStore::Create(int device, uint32_t dim, bool inner_product) {
  if (dim == 0 || static_cast<size_t>(dim) * sizeof(float) > kStageBytes)
    return Status::InvalidArgument("a GPU flat store takes dimensions 1.." + Str(kStageBytes / sizeof(float)) +
                                   "; asked for " + Str(dim));
  const int n = CudaDeviceCount();
  if (device < 0 || device >= n)
    return Status::InvalidArgument("CUDA device " + std::to_string(device) + " does not exist (this machine has " +
                                   std::to_string(n) + ")");
  VECWAL_ASSIGN_OR_RETURN(auto stream, CudaStream::Create(device));
  auto impl = std::make_unique<Impl>(std::move(stream));
  impl->device = device;
  impl->dim = dim;
  impl->inner_product = inner_product;
  VECWAL_RETURN_IF_ERROR(
      FromCuda(cudaDeviceGetAttribute(&impl->multiprocessors, cudaDevAttrMultiProcessorCount, device),
               "cudaDeviceGetAttribute"));
  VECWAL_ASSIGN_OR_RETURN(impl->blas, CreateCublas(impl->st()));
  for (int i = 0; i < 2; ++i) {
    VECWAL_ASSIGN_OR_RETURN(impl->stage[i], AllocatePinned(kStageBytes));
    VECWAL_ASSIGN_OR_RETURN(impl->staged[i], CreateEvent());
  }
  return std::unique_ptr<DeviceFlatStore>(new DeviceFlatStore(std::move(impl)));
}

uint32_t DeviceFlatStore::dim() const { return impl_->dim; }

size_t DeviceFlatStore::rows() const {
  std::lock_guard l(impl_->mu);
  return impl_->rows;
}

size_t DeviceFlatStore::capacity() const {
  std::lock_guard l(impl_->mu);
  return impl_->capacity;
}

Status DeviceFlatStore::Reserve(size_t rows) {
  std::lock_guard l(impl_->mu);
  VECWAL_RETURN_IF_ERROR(impl_->Use());
  return impl_->Grow(rows);
}

Status DeviceFlatStore::Append(const float* rows, size_t n) {
  std::lock_guard l(impl_->mu);
  const size_t bytes = impl_->row_bytes();
  return impl_->AppendWith(n, [&](size_t first, size_t count, std::byte* dst) {
    std::memcpy(dst, reinterpret_cast<const std::byte*>(rows) + first * bytes, count * bytes);
  });
}

Status DeviceFlatStore::AppendGathered(const std::byte* const* rows, size_t n) {
  std::lock_guard l(impl_->mu);
  const size_t bytes = impl_->row_bytes();
  return impl_->AppendWith(n, [&](size_t first, size_t count, std::byte* dst) {
    for (size_t i = 0; i < count; ++i) std::memcpy(dst + i * bytes, rows[first + i], bytes);
  });
}

Status DeviceFlatStore::MoveRows(const RowMove* moves, size_t n) {
  std::lock_guard l(impl_->mu);
  auto& m = *impl_;
  VECWAL_RETURN_IF_ERROR(CheckMoves(moves, n, m.rows));
  if (n == 0) return Status::OK();
  VECWAL_RETURN_IF_ERROR(m.Use());
  VECWAL_RETURN_IF_ERROR(Impl::Ensure(m.moves, n * sizeof(RowMove)));
  VECWAL_RETURN_IF_ERROR(m.Upload(m.moves.data(), moves, n * sizeof(RowMove)));
  // Every destination is below every source: fewer moves than half the
  // rows, so fewer than 2^31 blocks.
  MoveRowsKernel<<<static_cast<unsigned>(n), kThreads, 0, m.st()>>>(static_cast<const RowMove*>(m.moves.data()), m.dim,
                                                                     static_cast<float*>(m.vectors.data()),
                                                                     static_cast<float*>(m.norms.data()));
  VECWAL_RETURN_IF_ERROR(FromCuda(cudaGetLastError(), "MoveRowsKernel launch"));
  return m.stream.Synchronize();
}

Status DeviceFlatStore::Truncate(size_t rows) {
  std::lock_guard l(impl_->mu);
  if (rows > impl_->rows)
    return Status::InvalidArgument("GPU store: truncate to " + Str(rows) + " rows of " + Str(impl_->rows));
  impl_->rows = rows;
  return Status::OK();
}

Status DeviceFlatStore::ReadRow(size_t row, float* out) {
  std::lock_guard l(impl_->mu);
  auto& m = *impl_;
  if (row >= m.rows) return Status::InvalidArgument("GPU store: row " + Str(row) + " of " + Str(m.rows));
  VECWAL_RETURN_IF_ERROR(m.Use());
  VECWAL_RETURN_IF_ERROR(FromCuda(cudaMemcpyAsync(out, static_cast<const std::byte*>(m.vectors.data()) + row * m.row_bytes(),
                                                  m.row_bytes(), cudaMemcpyDeviceToHost, m.st()),
                                  "cudaMemcpyAsync (reading a row)"));
  return m.stream.Synchronize();
}

Status DeviceFlatStore::Search(const float* queries, size_t nq, size_t k, const RowFilter& which, float* distances,
                               int64_t* rows_out) {
  if (k > kMaxK) return Status::InvalidArgument("a GPU search takes k up to " + Str(kMaxK) + "; asked for " + Str(k));
  std::lock_guard l(impl_->mu);
  auto& m = *impl_;
  VECWAL_RETURN_IF_ERROR(CheckSkips(which, m.rows));
  std::fill_n(distances, nq * k, std::numeric_limits<float>::quiet_NaN());
  std::fill_n(rows_out, nq * k, int64_t{-1});
  if (nq == 0 || k == 0 || m.rows == 0) return Status::OK();
  VECWAL_RETURN_IF_ERROR(m.Use());
  const cudaStream_t s = m.st();
  const bool l2 = !m.inner_product;
  // K2 is also the pending area: at K2 = one block, any candidate that beat
  // the k-th best sorted both halves again, nearly every round (one query
  // of 1M rows: 0.91x PyTorch's queries/s). Four blocks' worth fill once,
  // and after that first sort the k-th best keeps almost everything out.
  const int k2 = RoundUpPow2(std::max<size_t>(k, 4 * kThreads));
  // A batch's queries, and then its results, pass through the pinned staging.
  const size_t qb = std::min({nq, kQueryBatch, kStageBytes / m.row_bytes(), kStageBytes / (k * sizeof(float))});
  const size_t tile = std::max<size_t>(1, std::min(m.rows, std::max<size_t>(4096, kProductFloats / qb)));
  // Enough blocks to fill the card when the batch has few queries.
  const size_t want_blocks = 4 * static_cast<size_t>(m.multiprocessors);
  const size_t slices =
      std::max<size_t>(1, std::min((want_blocks + qb - 1) / qb, (tile + kSliceRowsFloor - 1) / kSliceRowsFloor));
  VECWAL_RETURN_IF_ERROR(Impl::Ensure(m.queries, qb * m.row_bytes()));
  VECWAL_RETURN_IF_ERROR(Impl::Ensure(m.query_norms, qb * sizeof(float)));
  VECWAL_RETURN_IF_ERROR(Impl::Ensure(m.products, qb * tile * sizeof(float)));
  VECWAL_RETURN_IF_ERROR(Impl::Ensure(m.st_key, qb * slices * k2 * sizeof(float)));
  VECWAL_RETURN_IF_ERROR(Impl::Ensure(m.st_row, qb * slices * k2 * sizeof(uint32_t)));
  VECWAL_RETURN_IF_ERROR(Impl::Ensure(m.out_key, qb * k2 * sizeof(float)));
  VECWAL_RETURN_IF_ERROR(Impl::Ensure(m.out_row, qb * k2 * sizeof(uint32_t)));
  bool restore = false;
  VECWAL_ASSIGN_OR_RETURN(const uint8_t* dmask, m.SearchMask(which, restore));
  const size_t shared = SharedBytes(k2);
  const auto* keys = reinterpret_cast<const float*>(m.stage[0].get());
  const auto* found = reinterpret_cast<const uint32_t*>(m.stage[1].get());
  // An Append's last copies, or the mask's, may still read the staging buffers.
  for (auto& e : m.staged)
    VECWAL_RETURN_IF_ERROR(FromCuda(cudaEventSynchronize(e.get()), "cudaEventSynchronize (staging)"));
  const float one = 1.f, zero = 0.f;
  auto* products = static_cast<float*>(m.products.data());
  auto* qv = static_cast<float*>(m.queries.data());
  auto* qn = static_cast<float*>(m.query_norms.data());
  auto* sk = static_cast<float*>(m.st_key.data());
  auto* sr = static_cast<uint32_t*>(m.st_row.data());
  float* rk = slices > 1 ? static_cast<float*>(m.out_key.data()) : sk;
  uint32_t* rr = slices > 1 ? static_cast<uint32_t*>(m.out_row.data()) : sr;
  for (size_t q0 = 0; q0 < nq; q0 += qb) {
    const size_t b = std::min(qb, nq - q0);
    std::memcpy(m.stage[0].get(), queries + q0 * m.dim, b * m.row_bytes());
    VECWAL_RETURN_IF_ERROR(FromCuda(
        cudaMemcpyAsync(qv, m.stage[0].get(), b * m.row_bytes(), cudaMemcpyHostToDevice, s), "cudaMemcpyAsync (queries)"));
    if (l2) VECWAL_RETURN_IF_ERROR(SquaredNorms(qv, b, m.dim, qn, s));
    for (size_t row0 = 0; row0 < m.rows; row0 += tile) {
      const size_t t = std::min(tile, m.rows - row0);
      // products (b x t, row-major) = queries (b x dim) . rows(row0 .. row0+t)^T:
      // in cuBLAS's column-major terms, C (t x b) = A^T B with A the rows
      // (dim x t) and B the queries (dim x b).
      VECWAL_RETURN_IF_ERROR(FromCublas(
          cublasSgemm(m.blas.get(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(t), static_cast<int>(b),
                      static_cast<int>(m.dim), &one, static_cast<const float*>(m.vectors.data()) + row0 * m.dim,
                      static_cast<int>(m.dim), qv, static_cast<int>(m.dim), &zero, products, static_cast<int>(t)),
          "cublasSgemm"));
      SelectTileKernel<<<dim3(static_cast<unsigned>(b), static_cast<unsigned>(slices)), kThreads, shared, s>>>(
          products, t, row0, qn, static_cast<const float*>(m.norms.data()), dmask, l2, k2, static_cast<int>(k), sk, sr,
          row0 == 0);
      VECWAL_RETURN_IF_ERROR(FromCuda(cudaGetLastError(), "SelectTileKernel launch"));
    }
    if (slices > 1) {
      MergeSlicesKernel<<<static_cast<unsigned>(b), kThreads, shared, s>>>(sk, sr, static_cast<int>(slices), k2,
                                                                           static_cast<int>(k), rk, rr);
      VECWAL_RETURN_IF_ERROR(FromCuda(cudaGetLastError(), "MergeSlicesKernel launch"));
    }
    // The first k of each query's K2, packed: the queries' copy out of
    // stage[0] is ahead of this one on the stream.
    VECWAL_RETURN_IF_ERROR(FromCuda(cudaMemcpy2DAsync(m.stage[0].get(), k * sizeof(float), rk, k2 * sizeof(float),
                                                      k * sizeof(float), b, cudaMemcpyDeviceToHost, s),
                                    "cudaMemcpy2DAsync (results)"));
    VECWAL_RETURN_IF_ERROR(FromCuda(cudaMemcpy2DAsync(m.stage[1].get(), k * sizeof(uint32_t), rr,
                                                      k2 * sizeof(uint32_t), k * sizeof(uint32_t), b,
                                                      cudaMemcpyDeviceToHost, s),
                                    "cudaMemcpy2DAsync (results)"));
    VECWAL_RETURN_IF_ERROR(m.stream.Synchronize());
    for (size_t i = 0; i < b; ++i) {
      for (size_t j = 0; j < k; ++j) {
        const uint32_t r = found[i * k + j];
        if (r == kNoRow) break;
        rows_out[(q0 + i) * k + j] = r;
        distances[(q0 + i) * k + j] = l2 ? keys[i * k + j] : -keys[i * k + j];
      }
    }
  }
  if (restore) {
    VECWAL_RETURN_IF_ERROR(SetMask(static_cast<uint8_t*>(m.ones.data()), static_cast<const uint64_t*>(m.skips.data()),
                                   which.skipped, 1, s));
    m.ones_whole = true;
  }
  return Status::OK();
}

}  // namespace vecwal::gpu
