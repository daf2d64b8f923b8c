// gpu/'s mirrored index: a Flat FAISS index with a copy of its vectors in a
// RowStore that searches use. Its ids, rows, masks and dropped copies are
// checked here against FAISS's own Flat over a RowStore in host memory
// (HostRowStore, index::ExactKnn), so they run in CI; where a CUDA card is
// present they run over the card's DeviceFlatStore as well. And gpu::OnDevice
// where the card cannot take the index: the store refuses to open, or opens
// and serves from the CPU where asked to.
#define BOOST_TEST_MODULE mirror
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "gpu/device.h"
#include "gpu/flat_store.h"
#include "gpu/mirrored_index.h"
#include "tests/durable_index_util.h"

using namespace vecwal;
using namespace vecwal::gpu;
using test::Gaussian;

namespace {

// A RowStore in host memory, searched by the CPU's exact kernels.
class HostRowStore final : public RowStore {
 public:
  HostRowStore(uint32_t dim, index::Metric m, size_t max_k) : spec_{dim, m, "Flat"}, max_k_(max_k) {}
  uint32_t dim() const override { return spec_.dim; }
  size_t rows() const override { return v_.size() / spec_.dim; }
  size_t max_k() const override { return max_k_; }
  Status Reserve(size_t rows) override {
    v_.reserve(rows * spec_.dim);
    return Status::OK();
  }
  Status Append(const float* rows, size_t n) override {
    v_.insert(v_.end(), rows, rows + n * spec_.dim);
    return Status::OK();
  }
  Status AppendGathered(const std::byte* const* rows, size_t n) override {
    for (size_t i = 0; i < n; ++i) {
      const size_t at = v_.size();
      v_.resize(at + spec_.dim);
      std::memcpy(v_.data() + at, rows[i], spec_.dim * sizeof(float));
    }
    return Status::OK();
  }
  Status MoveRows(const RowMove* moves, size_t n) override {
    VECWAL_RETURN_IF_ERROR(CheckMoves(moves, n, rows()));
    for (size_t i = 0; i < n; ++i)
      std::copy_n(v_.begin() + moves[i].from * spec_.dim, spec_.dim, v_.begin() + moves[i].to * spec_.dim);
    ++move_calls_;
    return Status::OK();
  }
  Status Truncate(size_t rows) override {
    v_.resize(rows * spec_.dim);
    return Status::OK();
  }
  Status Search(const float* queries, size_t nq, size_t k, const RowFilter& which, float* distances,
                int64_t* found) override {
    VECWAL_RETURN_IF_ERROR(CheckSkips(which, rows()));
    std::vector<uint8_t> mask;
    if (which.keep != nullptr || which.skipped > 0) {
      mask.assign(rows(), 1);
      if (which.keep != nullptr) mask.assign(which.keep, which.keep + rows());
      for (size_t i = 0; i < which.skipped; ++i) mask[which.skip[i]] = 0;
    }
    index::ExactKnn(spec_, {queries, nq * spec_.dim}, v_, k, {distances, nq * k}, {found, nq * k}, mask);
    return Status::OK();
  }
  // How many MoveRows calls it took: a card pays a round trip for each.
  size_t move_calls() const { return move_calls_; }

 private:
  const index::IndexSpec spec_;
  const size_t max_k_;
  std::vector<float> v_;
  size_t move_calls_ = 0;
};

// Where a mirror keeps its copy: host memory always, the card where there is one.
struct Kind {
  std::string name;
  size_t max_k = 0;
  std::function<Result<std::unique_ptr<index::VectorIndex>>(std::unique_ptr<index::VectorIndex>)> Mirror;
};

std::vector<Kind> Kinds() {
  std::vector<Kind> k;
  // A small k limit, so that the searches past it (answered by the CPU index) are cheap.
  k.push_back({"host rows", 64, [](std::unique_ptr<index::VectorIndex> host) {
                 const auto& s = host->spec();
                 auto rows = std::make_unique<HostRowStore>(s.dim, s.metric, 64);
                 return MirrorOn(std::move(host), std::move(rows), "host rows");
               }});
  if (CudaDeviceCount() > 0)
    k.push_back({"cuda:0", DeviceFlatStore::kMaxK, OnDevice(0)});
  return k;
}

std::unique_ptr<index::VectorIndex> FlatOf(uint32_t dim, index::Metric m) {
  auto i = index::NewFaissIndex({dim, m, "Flat"});
  BOOST_REQUIRE(i.ok());
  return std::move(i).value();
}

void ExpectSameHits(const index::VectorIndex& mirror, const index::VectorIndex& cpu, const std::vector<float>& q,
                    size_t k, const index::IdSet* skip, const index::SearchParams& p) {
  auto a = mirror.Search(q, k, skip, p);
  auto b = cpu.Search(q, k, skip, p);
  BOOST_REQUIRE_MESSAGE(a.ok(), a.status().ToString());
  BOOST_REQUIRE(b.ok());
  BOOST_TEST(a->ids == b->ids, boost::test_tools::per_element());
  for (size_t i = 0; i < a->ids.size(); ++i)
    if (a->ids[i] != index::kNoId)
      BOOST_TEST(std::abs(a->distances[i] - b->distances[i]) <= 1e-3f * std::max(1.f, std::abs(b->distances[i])));
}

}  // namespace

BOOST_AUTO_TEST_CASE(a_mirrored_index_answers_as_the_cpu_flat_through_adds_removes_and_filters) {
  for (const Kind& kind : Kinds())
  for (auto metric : {index::Metric::kL2, index::Metric::kInnerProduct}) {
    BOOST_TEST_CONTEXT(kind.name) {
    const uint32_t dim = 40;
    auto cpu = FlatOf(dim, metric);
    auto host = FlatOf(dim, metric);
    std::vector<uint64_t> ids(3000);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = i * 7 + 3;
    auto v = Gaussian(ids.size(), dim, 20);
    BOOST_REQUIRE(cpu->Add(ids, v).ok());
    BOOST_REQUIRE(host->Add(ids, v).ok());
    auto m = kind.Mirror(std::move(host));  // uploads what the host holds
    BOOST_REQUIRE_MESSAGE(m.ok(), m.status().ToString());
    auto& gpu = **m;
    std::vector<uint64_t> gone;
    for (size_t i = 0; i < ids.size(); i += 5) gone.push_back(ids[i]);
    gone.push_back(999999);  // absent: ignored by both
    BOOST_REQUIRE(cpu->Remove(gone).ok());
    BOOST_REQUIRE(gpu.Remove(gone).ok());
    std::vector<uint64_t> more(700);
    for (size_t i = 0; i < more.size(); ++i) more[i] = 100000 + i;
    auto mv = Gaussian(more.size(), dim, 21);
    std::vector<const std::byte*> at(more.size());
    for (size_t i = 0; i < more.size(); ++i) at[i] = reinterpret_cast<const std::byte*>(mv.data() + i * dim);
    BOOST_REQUIRE(cpu->AddRows(more, at).ok());
    BOOST_REQUIRE(gpu.AddRows(more, at).ok());
    BOOST_TEST((gpu.Add(std::vector<uint64_t>{more[0]}, std::vector<float>(dim)).code() == Status::Code::kInvalidArgument));
    BOOST_TEST(gpu.size() == cpu->size());
    BOOST_REQUIRE(DeviceStatus(gpu).ok());

    auto q = Gaussian(25, dim, 22);
    ExpectSameHits(gpu, *cpu, q, 10, nullptr, {});
    // Skipped: each query's two best, a few others, and an id neither holds.
    index::IdSet skip{ids[1], ids[2], more[3], 424242};
    auto best = cpu->Search(q, 2);
    BOOST_REQUIRE(best.ok());
    skip.insert(best->ids.begin(), best->ids.end());
    ExpectSameHits(gpu, *cpu, q, 10, &skip, {});
    index::SearchParams f;
    f.filter = [](uint64_t id) { return id % 3 == 0; };
    ExpectSameHits(gpu, *cpu, q, 10, &skip, f);
    std::vector<uint64_t> few{ids[4], ids[6], more[9], 31337};
    index::SearchParams l;
    l.ids = std::span<const uint64_t>(few);
    ExpectSameHits(gpu, *cpu, q, 5, nullptr, l);
    // Past the card's k, and a knob a Flat has no part for: the CPU's answers, the CPU's error.
    ExpectSameHits(gpu, *cpu, Gaussian(2, dim, 23), kind.max_k + 1, nullptr, {});
    index::SearchParams np;
    np.nprobe = 4;
    BOOST_TEST((gpu.Search(q, 3, nullptr, np).status().code() == Status::Code::kInvalidArgument));
    }
  }
}

// A remove fills its holes from the rows past the new end in one batch: a
// replay of thousands of deletes makes one round trip to the card, not one
// an id. Removes of holes only, of tail rows only, of both, with ids
// repeated and absent, down to an empty store.
BOOST_AUTO_TEST_CASE(a_remove_moves_the_rows_it_keeps_in_one_call_and_the_mirror_answers_as_the_cpu) {
  const uint32_t dim = 16;
  auto cpu = FlatOf(dim, index::Metric::kL2);
  auto host = FlatOf(dim, index::Metric::kL2);
  std::vector<uint64_t> ids(1000);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = 5000 + i;
  auto v = Gaussian(ids.size(), dim, 50);
  BOOST_REQUIRE(cpu->Add(ids, v).ok());
  BOOST_REQUIRE(host->Add(ids, v).ok());
  auto rows = std::make_unique<HostRowStore>(dim, index::Metric::kL2, 2048);
  const HostRowStore& store = *rows;
  auto m = MirrorOn(std::move(host), std::move(rows), "host rows");
  BOOST_REQUIRE(m.ok());
  auto& mirror = **m;
  const auto q = Gaussian(7, dim, 51);
  auto expect_same = [&](const char* what) {
    BOOST_TEST_CONTEXT(what) {
      BOOST_TEST(store.rows() == cpu->size());
      BOOST_TEST(DeviceStatus(mirror).ok());
      ExpectSameHits(mirror, *cpu, q, 10, nullptr, {});
      // Every row: each id with its own vector's distance (near ties may
      // rank apart, so by id).
      const size_t k = std::max<size_t>(1, cpu->size());
      auto a = mirror.Search(q, k);
      auto b = cpu->Search(q, k);
      BOOST_REQUIRE(a.ok() && b.ok());
      for (size_t i = 0; i < q.size() / dim; ++i) {
        std::vector<std::pair<uint64_t, float>> x, y;
        for (size_t j = i * k; j < (i + 1) * k; ++j) {
          x.emplace_back(a->ids[j], a->distances[j]);
          y.emplace_back(b->ids[j], b->distances[j]);
        }
        std::sort(x.begin(), x.end());
        std::sort(y.begin(), y.end());
        for (size_t j = 0; j < x.size(); ++j) {
          BOOST_TEST(x[j].first == y[j].first);
          if (x[j].first != index::kNoId) BOOST_TEST(std::abs(x[j].second - y[j].second) <= 1e-3f * std::max(1.f, y[j].second));
        }
      }
    }
  };
  auto remove = [&](std::vector<uint64_t> gone) {
    BOOST_REQUIRE(cpu->Remove(gone).ok());
    BOOST_REQUIRE(mirror.Remove(gone).ok());
  };
  // The upload put the rows in insertion order: the last two ids are the last rows.
  remove({ids[999], ids[998]});
  BOOST_TEST(store.move_calls() == 0u);
  expect_same("the last rows");
  std::vector<uint64_t> spread;  // holes all through and the new last row, one id repeated, one absent
  for (size_t i = 0; i < ids.size(); i += 3) spread.push_back(ids[i]);
  spread.push_back(ids[997]);
  spread.push_back(ids[0]);
  spread.push_back(1);
  remove(spread);
  BOOST_TEST(store.move_calls() == 1u);
  expect_same("holes and tail rows");
  remove({});
  BOOST_TEST(store.move_calls() == 1u);
  std::vector<uint64_t> rest;
  for (uint64_t id : ids)
    if (cpu->Contains(id)) rest.push_back(id);
  remove(rest);  // every row goes: none moves
  BOOST_TEST(store.move_calls() == 1u);
  BOOST_TEST(cpu->size() == 0u);
  BOOST_TEST(store.rows() == 0u);
  std::vector<uint64_t> back{7, 8, 9};
  auto bv = Gaussian(3, dim, 52);
  BOOST_REQUIRE(cpu->Add(back, bv).ok());
  BOOST_REQUIRE(mirror.Add(back, bv).ok());
  expect_same("added after all went");
}

BOOST_AUTO_TEST_CASE(a_mirror_whose_copy_fails_a_change_is_dropped_and_searches_go_on_exact_on_the_cpu) {
  for (const Kind& kind : Kinds())
  for (bool on_remove : {false, true}) {
    BOOST_TEST_CONTEXT(kind.name << (on_remove ? ", remove" : ", add")) {
    const uint32_t dim = 12;
    auto cpu = FlatOf(dim, index::Metric::kL2);
    auto host = FlatOf(dim, index::Metric::kL2);
    std::vector<uint64_t> ids(500);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = i;
    auto v = Gaussian(ids.size(), dim, 40);
    BOOST_REQUIRE(cpu->Add(ids, v).ok());
    BOOST_REQUIRE(host->Add(ids, v).ok());
    auto m = kind.Mirror(std::move(host));
    BOOST_REQUIRE(m.ok());
    auto& gpu = **m;
    FailNextDeviceChange(gpu, Status::NoSpace("injected: the card is full"));
    // The change itself holds (the host has it) and is reported done.
    std::vector<uint64_t> changed{on_remove ? ids[3] : 9999};
    if (on_remove) {
      BOOST_REQUIRE(gpu.Remove(changed).ok());
      BOOST_REQUIRE(cpu->Remove(changed).ok());
    } else {
      auto nv = Gaussian(1, dim, 41);
      BOOST_REQUIRE(gpu.Add(changed, nv).ok());
      BOOST_REQUIRE(cpu->Add(changed, nv).ok());
    }
    Status st = DeviceStatus(gpu);
    BOOST_TEST((st.code() == Status::Code::kUnavailable));
    BOOST_TEST(st.ToString().find("the card is full") != std::string::npos);
    BOOST_TEST(gpu.SearchedOn().rfind("cpu (", 0) == 0u, gpu.SearchedOn());
    BOOST_TEST(gpu.SearchedOn().find("the card is full") != std::string::npos, gpu.SearchedOn());
    BOOST_TEST(gpu.Contains(changed[0]) == !on_remove);
    ExpectSameHits(gpu, *cpu, Gaussian(9, dim, 42), 6, nullptr, {});
    // Later changes go to the host alone, and searches follow them.
    std::vector<uint64_t> later{ids[10], ids[11]};
    BOOST_REQUIRE(gpu.Remove(later).ok());
    BOOST_REQUIRE(cpu->Remove(later).ok());
    ExpectSameHits(gpu, *cpu, Gaussian(9, dim, 43), 6, nullptr, {});
    }
  }
}

// A store over a mirror recovers into it (the checkpoint loaded, then the
// log's tail replayed through AddRows and Remove) and answers as a store on
// the CPU does; its checkpoints are the CPU store's.
BOOST_AUTO_TEST_CASE(a_store_over_a_mirror_recovers_into_it_and_answers_as_on_the_cpu) {
  using namespace store_test;
  for (const Kind& kind : Kinds()) {
    BOOST_TEST_CONTEXT(kind.name) {
      test::TempDir dir;
      auto opts = Options(dir.path());
      opts.wrap_index = kind.Mirror;
      std::mt19937_64 rng(31);
      Model model;
      {
        auto d = OpenOrDie(opts);
        RandomOps(*d, model, rng, 400);
        BOOST_REQUIRE(d->Checkpoint().ok());
        RandomOps(*d, model, rng, 400);  // the tail a reopen replays into the mirror
        ExpectEqual(*d, model);
      }
      auto d = OpenOrDie(opts);
      BOOST_TEST(d->Stats().searched_on.rfind(kind.name, 0) == 0u, d->Stats().searched_on);  // "cuda:0 (NVIDIA ...)"
      ExpectEqual(*d, model);
      RandomOps(*d, model, rng, 200);
      ExpectEqual(*d, model);
      BOOST_REQUIRE(d->Close().ok());
      auto c = OpenOrDie(Options(dir.path()));
      ExpectEqual(*c, model);
    }
  }
}

BOOST_AUTO_TEST_CASE(a_store_whose_card_is_missing_fails_to_open_or_serves_from_the_cpu_where_asked_to) {
  using namespace store_test;
  const int missing = gpu::CudaDeviceCount();
  const std::string named = "CUDA device " + std::to_string(missing) + " does not exist";
  test::TempDir dir;
  auto o = Options(dir.path());
  o.wrap_index = gpu::OnDevice(missing);
  auto refused = DurableIndex::Open(o);
  BOOST_REQUIRE(!refused.ok());
  BOOST_TEST(refused.status().ToString().find(named) != std::string::npos, refused.status().ToString());

  o.wrap_index = gpu::OnDevice(missing, gpu::IfNoCard::kSearchOnCpu);
  std::mt19937_64 rng(5);
  Model m;
  {
    auto d = OpenOrDie(o);
    const std::string on = d->Stats().searched_on;
    BOOST_TEST(on.rfind("cpu (", 0) == 0u, on);
    BOOST_TEST(on.find(named) != std::string::npos, on);
    RandomOps(*d, m, rng, 300);
    BOOST_REQUIRE(d->Checkpoint().ok());
    RandomOps(*d, m, rng, 200);
    ExpectEqual(*d, m);
  }
  auto d = OpenOrDie(o);  // loaded and replayed into the CPU index, as without a card
  ExpectEqual(*d, m);
  BOOST_TEST(d->Stats().searched_on.find(named) != std::string::npos);
  BOOST_REQUIRE(d->Close().ok());

  // An index the card could never take is a mistake in the options, card or not.
  test::TempDir other;
  auto hnsw = Options(other.path(), "HNSW16");
  hnsw.wrap_index = gpu::OnDevice(missing, gpu::IfNoCard::kSearchOnCpu);
  auto wrong = DurableIndex::Open(hnsw);
  BOOST_TEST((wrong.status().code() == Status::Code::kInvalidArgument));
  BOOST_TEST(wrong.status().ToString().find("'HNSW16'") != std::string::npos, wrong.status().ToString());
}
