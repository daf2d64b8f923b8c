#define BOOST_TEST_MODULE recent_writes
#include <boost/test/unit_test.hpp>

#include <map>
#include <random>

#include "recovery/recent_writes.h"

using namespace vecwal;
using recovery::MergeHits;
using recovery::RecentWrites;

namespace {

constexpr uint32_t kDim = 8;

std::vector<float> Vec(std::mt19937_64& rng) {
  std::normal_distribution<float> g;
  std::vector<float> v(kDim);
  for (auto& x : v) x = g(rng);
  return v;
}

std::vector<std::byte> Bytes(std::string_view s) {
  std::vector<std::byte> b;
  for (char c : s) b.push_back(static_cast<std::byte>(c));
  return b;
}

index::SearchResults Hits(size_t k, std::vector<std::pair<uint64_t, float>> row) {
  index::SearchResults r;
  r.nq = 1;
  r.k = k;
  for (size_t j = 0; j < k; ++j) {
    r.ids.push_back(j < row.size() ? row[j].first : index::kNoId);
    r.distances.push_back(j < row.size() ? row[j].second : 0.f);
  }
  return r;
}

}  // namespace

BOOST_AUTO_TEST_CASE(recent_writes_keep_each_ids_net_effect) {
  RecentWrites r({kDim, index::Metric::kL2, "Flat"});
  std::mt19937_64 rng(1);
  const auto a = Vec(rng), b = Vec(rng), c = Vec(rng);
  r.Apply(wal::UpsertOp{1, a, Bytes("one")});
  r.Apply(wal::UpsertOp{1, b, Bytes("two")});  // the update wins
  r.Apply(wal::DeleteOp{2});                   // hides the index's id 2
  wal::BatchOp batch;
  batch.ops.emplace_back(wal::UpsertOp{3, c, {}});
  batch.ops.emplace_back(wal::DeleteOp{3});  // in order: deleted
  batch.ops.emplace_back(wal::UpsertOp{4, a, Bytes("four")});
  r.Apply(batch);
  BOOST_TEST(r.size() == 4u);
  auto one = r.Find(1);
  BOOST_REQUIRE(one.has_value());
  BOOST_TEST(one->present);
  BOOST_TEST((std::vector<float>(one->vector.begin(), one->vector.end()) == b));
  BOOST_TEST((std::vector<std::byte>(one->payload.begin(), one->payload.end()) == Bytes("two")));
  BOOST_REQUIRE(r.Find(2).has_value());
  BOOST_TEST(!r.Find(2)->present);
  BOOST_TEST(!r.Find(3)->present);
  BOOST_TEST(r.Find(4)->present);
  BOOST_TEST(!r.Find(5).has_value());  // not written: the index answers
  std::map<uint64_t, bool> seen;
  r.ForEach([&](uint64_t id, const float* v, std::span<const std::byte>) { seen[id] = v != nullptr; });
  BOOST_TEST((seen == std::map<uint64_t, bool>{{1, true}, {2, false}, {3, false}, {4, true}}));
  r.Clear(16);
  BOOST_TEST(r.empty());
  BOOST_TEST(!r.Find(1).has_value());
  r.Apply(wal::UpsertOp{9, c, {}});  // usable again after Clear
  BOOST_TEST((std::vector<float>(r.Find(9)->vector.begin(), r.Find(9)->vector.end()) == c));
}

// The exact scan ranks as FAISS's Flat index ranks the same present vectors,
// for both metrics; deleted entries never come back.
BOOST_AUTO_TEST_CASE(recent_writes_search_ranks_as_faiss_flat) {
  for (auto metric : {index::Metric::kL2, index::Metric::kInnerProduct}) {
    BOOST_TEST_CONTEXT("metric " << index::ToString(metric)) {
      const index::IndexSpec spec{kDim, metric, "Flat"};
      RecentWrites r(spec);
      auto ref = index::NewFaissIndex(spec);
      BOOST_REQUIRE(ref.ok());
      std::mt19937_64 rng(2);
      std::map<uint64_t, std::vector<float>> live;
      for (int i = 0; i < 300; ++i) {
        const uint64_t id = rng() % 120;
        if (rng() % 4 == 0) {
          r.Apply(wal::DeleteOp{id});
          live.erase(id);
        } else {
          auto v = Vec(rng);
          r.Apply(wal::UpsertOp{id, v, {}});
          live[id] = v;
        }
      }
      std::vector<uint64_t> ids;
      std::vector<float> rows;
      for (const auto& [id, v] : live) {
        ids.push_back(id);
        rows.insert(rows.end(), v.begin(), v.end());
      }
      BOOST_REQUIRE((*ref)->Add(ids, rows).ok());
      // 7 queries are scanned query by query, 45 by FAISS's BLAS product.
      for (int nq : {7, 45}) {
        std::vector<float> q;
        for (int i = 0; i < nq; ++i) {
          auto v = Vec(rng);
          q.insert(q.end(), v.begin(), v.end());
        }
        for (size_t k : {size_t{1}, size_t{5}, live.size() + 3}) {
          auto got = r.Search(q, k);
          auto want = (*ref)->Search(q, k);
          BOOST_REQUIRE(want.ok());
          BOOST_TEST(got.ids == want->ids, boost::test_tools::per_element());
          for (size_t j = 0; j < got.ids.size(); ++j)
            if (got.ids[j] != index::kNoId)
              BOOST_TEST(std::abs(got.distances[j] - want->distances[j]) <= 1e-4f * (1 + std::abs(want->distances[j])));
          // A filter, or a list of ids (the odd ones written, some twice, and
          // some never written): the rows they leave out, and the deleted
          // ones, are never compared.
          const auto odd = [](uint64_t id) { return id % 2 == 1; };
          std::vector<uint64_t> odd_ids;
          for (uint64_t id = 1; id < 300; id += 2) odd_ids.insert(odd_ids.end(), 1 + (id % 3 == 0), id);
          auto want_odd = (*ref)->Search(q, k, nullptr, {.filter = odd});
          BOOST_REQUIRE(want_odd.ok());
          BOOST_TEST(r.Search(q, k, {.filter = odd}).ids == want_odd->ids, boost::test_tools::per_element());
          BOOST_TEST(r.Search(q, k, {.ids = odd_ids}).ids == want_odd->ids, boost::test_tools::per_element());
          // Nothing passes: FAISS 1.7.3 answers k = 1 by L2 with row 0 all the same.
          for (const index::SearchParams& nothing :
               {index::SearchParams{.filter = [](uint64_t) { return false; }},
                index::SearchParams{.ids = std::span<const uint64_t>()}}) {
            auto none = r.Search(q, k, nothing);
            BOOST_TEST(std::count(none.ids.begin(), none.ids.end(), index::kNoId) == static_cast<long>(none.ids.size()));
          }
        }
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(merged_hits_drop_what_recent_writes_hide_and_keep_the_best) {
  index::IdSet hidden{2, 9};
  // The index still lists 2 (rewritten since) and 9 (deleted since).
  auto from_index = Hits(5, {{1, 0.1f}, {2, 0.2f}, {9, 0.3f}, {3, 0.5f}, {4, 0.9f}});
  auto recent = Hits(3, {{7, 0.15f}, {2, 0.4f}, {8, 0.6f}});
  auto m = MergeHits(from_index, hidden, recent, 4, index::Metric::kL2);
  BOOST_TEST((m.ids == std::vector<uint64_t>{1, 7, 2, 3}));
  BOOST_TEST((m.distances == std::vector<float>{0.1f, 0.15f, 0.4f, 0.5f}));
  // Inner product: larger first.
  auto ip_index = Hits(3, {{1, 0.9f}, {2, 0.8f}, {3, 0.1f}});
  auto ip_recent = Hits(2, {{5, 0.85f}, {6, 0.05f}});
  auto ip = MergeHits(ip_index, hidden, ip_recent, 4, index::Metric::kInnerProduct);
  BOOST_TEST((ip.ids == std::vector<uint64_t>{1, 5, 3, 6}));
  // Fewer hits than k between them: the row ends in kNoId.
  auto few = MergeHits(Hits(2, {{2, 0.1f}}), hidden, Hits(2, {{4, 0.3f}}), 3, index::Metric::kL2);
  BOOST_TEST((few.ids == std::vector<uint64_t>{4, index::kNoId, index::kNoId}));
}
