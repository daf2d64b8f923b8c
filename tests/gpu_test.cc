// gpu/: device memory and streams, and the card's exact search against the
// CPU's (the mirrored index, and stores on the card: mirror_test). Runs on the GPU machine; where no CUDA device exists it
// says so and CTest marks it skipped.
#define BOOST_TEST_MODULE gpu
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <set>
#include <vector>

#include "gpu/device.h"
#include "gpu/flat_store.h"
#include "gpu/mirrored_index.h"
#include "index/vector_index.h"
#include "tests/test_util.h"

using namespace vecwal;
using namespace vecwal::gpu;
using test::Gaussian;

namespace {
// Boost.Test's global fixture: exit 77 (CTest's SKIP_RETURN_CODE) when there
// is no card, before any case runs.
struct RequireDevice {
  RequireDevice() {
    if (CudaDeviceCount() == 0) {
      std::printf("skipped: no CUDA device\n");
      std::exit(77);
    }
    auto d = DescribeDevice(0);
    std::printf("device 0: %s\n", d.ok() ? d->c_str() : d.status().ToString().c_str());
  }
};
}  // namespace
BOOST_TEST_GLOBAL_FIXTURE(RequireDevice);

BOOST_AUTO_TEST_CASE(kernel_fills_device_memory_and_copies_back) {
  auto stream = CudaStream::Create(0);
  BOOST_REQUIRE(stream.ok());
  auto buf = DeviceBuffer::Allocate(1000 * sizeof(float));
  BOOST_REQUIRE(buf.ok());
  BOOST_REQUIRE(FillFloats(*buf, 1000, 2.5f, *stream).ok());
  std::vector<float> host(1000, 0.f);
  BOOST_REQUIRE(buf->CopyToHost(host.data(), host.size() * sizeof(float), *stream).ok());
  BOOST_REQUIRE(stream->Synchronize().ok());
  for (float v : host) BOOST_REQUIRE(v == 2.5f);
}

BOOST_AUTO_TEST_CASE(copies_past_the_buffer_are_refused) {
  auto stream = CudaStream::Create(0);
  BOOST_REQUIRE(stream.ok());
  auto buf = DeviceBuffer::Allocate(16);
  BOOST_REQUIRE(buf.ok());
  std::vector<float> host(8);
  BOOST_TEST((buf->CopyFromHost(host.data(), 32, *stream).code() == Status::Code::kInvalidArgument));
  BOOST_TEST((FillFloats(*buf, 8, 1.f, *stream).code() == Status::Code::kInvalidArgument));
}

// --- DeviceFlatStore: exact search against the CPU's ------------------------

namespace {

double TrueDistance(const float* q, const float* x, uint32_t dim, bool ip) {
  double s = 0;
  for (uint32_t i = 0; i < dim; ++i) s += ip ? double(q[i]) * x[i] : (double(q[i]) - x[i]) * (double(q[i]) - x[i]);
  return s;
}

std::unique_ptr<DeviceFlatStore> StoreOf(const std::vector<float>& rows, uint32_t dim, bool ip) {
  auto s = DeviceFlatStore::Create(0, dim, ip);
  BOOST_REQUIRE_MESSAGE(s.ok(), s.status().ToString());
  BOOST_REQUIRE((*s)->Append(rows.data(), rows.size() / dim).ok());
  return std::move(s).value();
}

// The GPU's answer to each query is the CPU's (index::ExactKnn, FAISS's
// kernels) up to ties and float rounding: the k-th distances agree, every
// row returned is at the distance reported, and none is returned twice.
// `keep` and `skip` as a RowFilter's.
void ExpectExact(DeviceFlatStore& store, const std::vector<float>& rows, const std::vector<float>& queries,
                 size_t k, bool ip, const std::vector<uint8_t>& keep = {}, const std::vector<uint64_t>& skip = {}) {
  const uint32_t dim = store.dim();
  const size_t nq = queries.size() / dim;
  std::vector<float> d(nq * k), want_d(nq * k);
  std::vector<int64_t> r(nq * k), want_r(nq * k);
  const RowFilter which{keep.empty() ? nullptr : keep.data(), skip.data(), skip.size()};
  BOOST_REQUIRE(store.Search(queries.data(), nq, k, which, d.data(), r.data()).ok());
  std::vector<uint8_t> mask;
  if (!keep.empty() || !skip.empty()) {
    mask = keep.empty() ? std::vector<uint8_t>(rows.size() / dim, 1) : keep;
    for (uint64_t row : skip) mask[row] = 0;
  }
  index::IndexSpec spec{dim, ip ? index::Metric::kInnerProduct : index::Metric::kL2, "Flat"};
  index::ExactKnn(spec, queries, rows, k, want_d, want_r, mask);
  size_t checked = 0;
  for (size_t q = 0; q < nq; ++q) {
    std::set<int64_t> seen;
    for (size_t j = 0; j < k; ++j) {
      const size_t at = q * k + j;
      BOOST_REQUIRE_MESSAGE((r[at] < 0) == (want_r[at] < 0), "query " << q << " place " << j << ": row " << r[at]
                                                                       << ", the CPU's " << want_r[at]);
      if (r[at] < 0) {
        BOOST_REQUIRE(std::isnan(d[at]));
        continue;
      }
      BOOST_REQUIRE(seen.insert(r[at]).second);
      if (!mask.empty()) BOOST_REQUIRE(mask[r[at]] != 0);
      const double scale = std::max(1.0, std::abs(double(want_d[at])));
      BOOST_REQUIRE_MESSAGE(std::abs(d[at] - want_d[at]) <= 1e-3 * scale,
                            "query " << q << " place " << j << ": distance " << d[at] << ", the CPU's " << want_d[at]);
      const double truth = TrueDistance(&queries[q * dim], &rows[r[at] * dim], dim, ip);
      BOOST_REQUIRE_MESSAGE(std::abs(d[at] - truth) <= 1e-3 * std::max(1.0, std::abs(truth)),
                            "query " << q << " row " << r[at] << ": reported " << d[at] << ", truly " << truth);
      ++checked;
    }
  }
  BOOST_TEST_MESSAGE("checked " << checked << " hits");
}

}  // namespace

BOOST_AUTO_TEST_CASE(gpu_search_equals_the_cpus_exact_search_for_l2_and_inner_product) {
  for (bool ip : {false, true}) {
    const uint32_t dim = 96;
    auto rows = Gaussian(5000, dim, 1), queries = Gaussian(37, dim, 2);
    auto store = StoreOf(rows, dim, ip);
    for (size_t k : {size_t{1}, size_t{10}, size_t{129}, DeviceFlatStore::kMaxK}) ExpectExact(*store, rows, queries, k, ip);
  }
}

BOOST_AUTO_TEST_CASE(gpu_search_covers_every_tile_slice_and_query_batch) {
  // 150k rows are three tiles for a batch of 1024 queries, and 1100 queries
  // two batches; one query alone is split over many blocks and merged.
  const uint32_t dim = 16;
  auto rows = Gaussian(150000, dim, 3);
  auto store = StoreOf(rows, dim, false);
  ExpectExact(*store, rows, Gaussian(1100, dim, 4), 7, false);
  ExpectExact(*store, rows, Gaussian(1, dim, 5), 300, false);
  // The nearest rows placed last: a search that missed the last tile misses them.
  auto q = Gaussian(3, dim, 6);
  BOOST_REQUIRE(store->Append(q.data(), 1).ok());
  rows.insert(rows.end(), q.begin(), q.begin() + dim);
  ExpectExact(*store, rows, q, 5, false);
}

BOOST_AUTO_TEST_CASE(k_past_the_rows_pads_with_no_row_and_nan) {
  const uint32_t dim = 8;
  auto rows = Gaussian(5, dim, 7);
  auto store = StoreOf(rows, dim, false);
  ExpectExact(*store, rows, Gaussian(3, dim, 8), 12, false);
  auto empty = DeviceFlatStore::Create(0, dim, false);
  BOOST_REQUIRE(empty.ok());
  std::vector<float> d(4);
  std::vector<int64_t> r(4, 99);
  BOOST_REQUIRE((*empty)->Search(rows.data(), 1, 4, {}, d.data(), r.data()).ok());
  for (int i = 0; i < 4; ++i) BOOST_TEST((r[i] == -1 && std::isnan(d[i])));
  BOOST_TEST(((*empty)->Search(rows.data(), 1, DeviceFlatStore::kMaxK + 1, {}, d.data(), r.data()).code() ==
              Status::Code::kInvalidArgument));
}

BOOST_AUTO_TEST_CASE(a_mask_leaves_rows_out_and_k_hits_come_from_the_rest) {
  const uint32_t dim = 32;
  auto rows = Gaussian(20000, dim, 9);
  auto store = StoreOf(rows, dim, true);
  std::vector<uint8_t> mask(20000, 0);
  for (size_t i = 0; i < mask.size(); i += 97) mask[i] = 1;  // 1% of the rows
  ExpectExact(*store, rows, Gaussian(50, dim, 10), 20, true, mask);
  std::fill(mask.begin(), mask.end(), 0);
  mask[12345] = 1;
  ExpectExact(*store, rows, Gaussian(5, dim, 11), 3, true, mask);  // one hit, then padding
}

// Skipped rows clear bytes in the card's mask of ones and set them again
// after: a search after one that skipped sees every row, the mask follows
// the store's growth, and skips combine with a caller's mask.
BOOST_AUTO_TEST_CASE(skipped_rows_are_left_out_and_the_next_search_sees_them_again) {
  const uint32_t dim = 20;
  auto rows = Gaussian(30000, dim, 14);
  auto store = StoreOf(rows, dim, false);
  // The queries are rows: a search that skips a query's own row must not return it.
  std::vector<float> q(rows.begin() + 777 * dim, rows.begin() + 787 * dim);
  std::vector<uint64_t> skip;
  for (uint64_t r = 777; r < 787; ++r) skip.push_back(r);
  for (uint64_t r = 0; r < 30000; r += 101) skip.push_back(r);
  ExpectExact(*store, rows, q, 16, false, {}, skip);
  ExpectExact(*store, rows, q, 16, false);  // every row again: the skipped ones first
  std::vector<uint8_t> keep(30000, 0);
  for (size_t i = 0; i < keep.size(); i += 3) keep[i] = 1;
  ExpectExact(*store, rows, q, 16, false, keep, skip);
  ExpectExact(*store, rows, q, 16, false, {}, skip);
  // Past the capacity the mask had: the new rows are searched, and skipped where asked.
  auto more = Gaussian(50000, dim, 15);
  BOOST_REQUIRE(store->Append(more.data(), 50000).ok());
  rows.insert(rows.end(), more.begin(), more.end());
  skip.push_back(79999);
  q.insert(q.end(), more.end() - dim, more.end());
  ExpectExact(*store, rows, q, 16, false, {}, skip);
  ExpectExact(*store, rows, q, 16, false);
  const std::vector<uint64_t> past{80000};
  std::vector<float> d(1);
  std::vector<int64_t> r(1);
  BOOST_TEST((store->Search(q.data(), 1, 1, RowFilter{nullptr, past.data(), 1}, d.data(), r.data()).code() ==
              Status::Code::kInvalidArgument));
  ExpectExact(*store, rows, q, 16, false);
}

BOOST_AUTO_TEST_CASE(moved_rows_and_gathered_adds_land_where_they_are_asked_to) {
  const uint32_t dim = 24;
  auto rows = Gaussian(300, dim, 12);
  auto store = StoreOf(rows, dim, false);
  // Three holes filled from the end in one batch; rows 296 and 298 go.
  const std::vector<RowMove> moves{{299, 7}, {297, 100}, {295, 0}};
  BOOST_REQUIRE(store->MoveRows(moves.data(), moves.size()).ok());
  BOOST_REQUIRE(store->Truncate(295).ok());
  std::vector<float> got(dim);
  for (const RowMove& m : moves) {
    if (m.to == 7) continue;  // checked again below, after the adds
    BOOST_REQUIRE(store->ReadRow(m.to, got.data()).ok());
    BOOST_TEST((got == std::vector<float>(rows.begin() + m.from * dim, rows.begin() + (m.from + 1) * dim)));
  }
  BOOST_REQUIRE(store->ReadRow(1, got.data()).ok());  // untouched
  BOOST_TEST((got == std::vector<float>(rows.begin() + dim, rows.begin() + 2 * dim)));
  BOOST_TEST(store->rows() == 295u);
  BOOST_TEST((store->ReadRow(295, got.data()).code() == Status::Code::kInvalidArgument));
  const std::vector<RowMove> past{{400, 1}}, crossing{{200, 10}, {150, 160}};
  BOOST_TEST((store->MoveRows(past.data(), 1).code() == Status::Code::kInvalidArgument));
  BOOST_TEST((store->MoveRows(crossing.data(), 2).code() == Status::Code::kInvalidArgument));
  BOOST_REQUIRE(store->ReadRow(7, got.data()).ok());
  BOOST_TEST((got == std::vector<float>(rows.begin() + 299 * dim, rows.end())));
  // Gathered from unaligned places, through both staging buffers (more
  // rows than one 8 MiB buffer holds at 24 floats).
  const size_t n = 100000;
  auto more = Gaussian(n, dim, 13);
  std::vector<std::byte> unaligned(more.size() * sizeof(float) + 1);
  std::memcpy(unaligned.data() + 1, more.data(), more.size() * sizeof(float));
  std::vector<const std::byte*> at(n);
  for (size_t i = 0; i < n; ++i) at[i] = unaligned.data() + 1 + (n - 1 - i) * dim * sizeof(float);
  BOOST_REQUIRE(store->AppendGathered(at.data(), n).ok());
  BOOST_REQUIRE(store->ReadRow(295, got.data()).ok());
  BOOST_TEST((got == std::vector<float>(more.end() - dim, more.end())));
  BOOST_REQUIRE(store->ReadRow(295 + n - 1, got.data()).ok());
  BOOST_TEST((got == std::vector<float>(more.begin(), more.begin() + dim)));
  // Searches see the moved row's norm too: its own vector finds it at 0.
  std::vector<float> d(1);
  std::vector<int64_t> r(1);
  std::vector<float> q(rows.begin() + 299 * dim, rows.end());
  BOOST_REQUIRE(store->Search(q.data(), 1, 1, {}, d.data(), r.data()).ok());
  BOOST_TEST(r[0] == 7);
  BOOST_TEST(d[0] < 1e-3f);
}

// --- The mirror's refusals (its behaviour on the card: mirror_test) --------

namespace {

std::unique_ptr<index::VectorIndex> FlatOf(uint32_t dim, index::Metric m) {
  auto i = index::NewFaissIndex({dim, m, "Flat"});
  BOOST_REQUIRE(i.ok());
  return std::move(i).value();
}

}  // namespace

BOOST_AUTO_TEST_CASE(a_mirror_takes_only_a_flat_index_on_a_card_that_exists) {
  auto hnsw = index::NewFaissIndex({8, index::Metric::kL2, "HNSW16"});
  BOOST_REQUIRE(hnsw.ok());
  auto m = MirrorOnDevice(std::move(hnsw).value(), 0);
  BOOST_TEST((m.status().code() == Status::Code::kInvalidArgument));
  BOOST_TEST(m.status().ToString().find("HNSW16") != std::string::npos);
  auto far = MirrorOnDevice(FlatOf(8, index::Metric::kL2), CudaDeviceCount());
  BOOST_TEST((far.status().code() == Status::Code::kInvalidArgument));
}
