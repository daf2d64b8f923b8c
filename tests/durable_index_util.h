// What the durable index's tests share: a small store's options, random
// vectors, random ops mirrored in an in-memory model, and the check that a
// store equals its model.
#pragma once

#include <boost/test/unit_test.hpp>

#include <iterator>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "index/vector_index.h"
#include "recovery/durable_index.h"
#include "tests/test_util.h"

namespace vecwal::store_test {

using recovery::DurableIndex;
using recovery::DurableIndexOptions;
using recovery::WriteBatch;


inline constexpr uint32_t kDim = 8;

struct Model {
  std::map<uint64_t, std::pair<std::vector<float>, std::vector<std::byte>>> rows;
};

inline DurableIndexOptions Options(const std::string& dir, const std::string& desc = "Flat") {
  DurableIndexOptions o;
  o.dir = dir;
  o.spec = {kDim, index::Metric::kL2, desc};
  o.wal = test::SmallLogOptions();
  o.checkpoint_every_log_bytes = 0;
  o.max_payload_bytes = 256;
  return o;
}

inline std::unique_ptr<DurableIndex> OpenOrDie(const DurableIndexOptions& o) {
  auto d = DurableIndex::Open(o);
  BOOST_REQUIRE_MESSAGE(d.ok(), d.status().ToString());
  return std::move(d).value();
}

inline std::vector<float> Vec(std::mt19937_64& rng) {
  std::normal_distribution<float> g;
  std::vector<float> v(kDim);
  for (auto& x : v) x = g(rng);
  return v;
}

// Random inserts, updates, upserts, removes and batches, mirrored in `m`.
inline void RandomOps(DurableIndex& d, Model& m, std::mt19937_64& rng, int n) {
  for (int i = 0; i < n; ++i) {
    uint64_t id = rng() % 200;
    auto v = Vec(rng);
    auto p = test::Payload(rng(), rng() % 40);
    bool present = m.rows.count(id) != 0;
    switch (rng() % 5) {
      case 0: {
        Status s = d.Insert(id, v, p);
        BOOST_REQUIRE(s.ok() == !present);
        if (!present) m.rows[id] = {v, p};
        break;
      }
      case 1: {
        Status s = d.Update(id, v, p);
        BOOST_REQUIRE(s.ok() == present);
        if (present) m.rows[id] = {v, p};
        break;
      }
      case 2:
        BOOST_REQUIRE(d.Upsert(id, v, p).ok());
        m.rows[id] = {v, p};
        break;
      case 3: {
        Status s = d.Remove(id);
        BOOST_REQUIRE_MESSAGE(s.ok() == present, "remove " << id << " present=" << present << ": " << s.ToString());
        m.rows.erase(id);
        break;
      }
      default: {
        WriteBatch b;
        uint64_t id2 = rng() % 200;
        b.Upsert(id, v, p);
        b.Remove(id2);
        BOOST_REQUIRE(d.Apply(b).ok());
        m.rows[id] = {v, p};
        m.rows.erase(id2);
        break;
      }
    }
  }
}

// What DurableIndex::Scan listed, as a model's rows: pieces that were empty,
// past `piece` entries or of the wrong shape, and ids listed again, counted
// (and left out). Checked after the scan: a visitor must not call the store.
struct Scanned {
  decltype(Model::rows) rows;
  size_t repeated = 0, misshapen = 0;
  Status status;
};

inline Scanned ScanAll(const DurableIndex& d, size_t piece) {
  Scanned out;
  auto at = d.Scan(piece, [&](const recovery::ScanPiece& p) {
    if (p.ids.empty() || p.ids.size() > piece || p.vectors.size() != p.ids.size() * kDim ||
        p.payloads.size() != p.ids.size()) {
      ++out.misshapen;
      return Status::OK();
    }
    for (size_t i = 0; i < p.ids.size(); ++i) {
      const auto v = p.vectors.subspan(i * kDim, kDim);
      out.repeated += !out.rows.try_emplace(p.ids[i], std::vector<float>(v.begin(), v.end()),
                                            std::vector<std::byte>(p.payloads[i].begin(), p.payloads[i].end()))
                           .second;
    }
    return Status::OK();
  });
  out.status = at.status();
  return out;
}

// Search is compared with a FAISS Flat index of `metric` built from the model; where the
// store's index is approximate (a big HNSW), `exact_search` false compares
// only that a sample of the vectors each find themselves and nothing removed.
inline void ExpectEqual(const DurableIndex& d, const Model& m, bool exact_search = true,
                        index::Metric metric = index::Metric::kL2) {
  BOOST_REQUIRE_EQUAL(d.Size(), m.rows.size());
  for (const auto& [id, row] : m.rows) {
    auto e = d.Get(id);
    BOOST_REQUIRE_MESSAGE(e.ok(), "id " << id << ": " << e.status().ToString());
    BOOST_REQUIRE((e->vector == row.first));
    BOOST_REQUIRE((e->payload == row.second));
  }
  // A scan lists the same entries, each once, in pieces of at most 7.
  const Scanned scanned = ScanAll(d, 7);
  BOOST_REQUIRE_MESSAGE(scanned.status.ok(), scanned.status.ToString());
  BOOST_TEST(scanned.misshapen == 0u);
  BOOST_TEST(scanned.repeated == 0u);
  BOOST_TEST(scanned.rows.size() == m.rows.size());
  BOOST_TEST((scanned.rows == m.rows), "a scan's entries differ from the model's");
  if (!exact_search) {
    std::vector<float> q;
    std::vector<uint64_t> want;
    for (auto it = m.rows.begin(); it != m.rows.end(); std::advance(it, std::min<size_t>(50, std::distance(it, m.rows.end())))) {
      q.insert(q.end(), it->second.first.begin(), it->second.first.end());
      want.push_back(it->first);
    }
    auto r = d.Search(q, 3);
    BOOST_REQUIRE(r.ok());
    size_t self_first = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      self_first += r->ids[i * 3] == want[i];
      for (size_t j = 0; j < 3; ++j) BOOST_TEST(m.rows.count(r->ids[i * 3 + j]) == 1u, "a removed id was found");
    }
    BOOST_TEST(self_first >= want.size() * 95 / 100);
    return;
  }
  // Search equals a FAISS index built from the model.
  auto ref = index::NewFaissIndex({kDim, metric, "Flat"});
  std::vector<uint64_t> ids;
  std::vector<float> vecs;
  for (const auto& [id, row] : m.rows) {
    ids.push_back(id);
    vecs.insert(vecs.end(), row.first.begin(), row.first.end());
  }
  BOOST_REQUIRE((*ref)->Add(ids, vecs).ok());
  std::mt19937_64 rng(77);
  std::vector<float> q;
  for (int i = 0; i < 5; ++i) {
    auto v = Vec(rng);
    q.insert(q.end(), v.begin(), v.end());
  }
  auto a = d.Search(q, 4);
  auto b = (*ref)->Search(q, 4);
  BOOST_REQUIRE(a.ok() && b.ok());
  BOOST_TEST(a->ids == b->ids, boost::test_tools::per_element());
}

}  // namespace vecwal::store_test
