// index/: the FAISS CPU backend behind VectorIndex.
#define BOOST_TEST_MODULE index
#include <boost/test/unit_test.hpp>
#include <faiss/utils/distances.h>

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <limits>
#include <random>
#include <set>
#include <thread>

#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIDMap.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexPreTransform.h>
#include <faiss/clone_index.h>
#include <faiss/impl/IDSelector.h>
#include <faiss/impl/io.h>
#include <faiss/index_io.h>

#include "index/page_prefaulter.h"
#include "index/vector_index.h"
#include "tests/test_util.h"

using namespace vecwal;
using namespace vecwal::index;

namespace {

constexpr uint32_t kDim = 16;

std::vector<float> RandomVectors(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g;
  std::vector<float> v(n * kDim);
  for (auto& x : v) x = g(rng);
  return v;
}

std::unique_ptr<VectorIndex> Make(const std::string& desc, Metric m = Metric::kL2) {
  auto idx = NewFaissIndex({kDim, m, desc});
  BOOST_REQUIRE_MESSAGE(idx.ok(), idx.status().ToString());
  if (!(*idx)->is_trained()) BOOST_REQUIRE((*idx)->Train(RandomVectors(2000, 99)).ok());
  return std::move(idx).value();
}

std::vector<uint64_t> Ids(size_t n, uint64_t base) {
  std::vector<uint64_t> ids(n);
  for (size_t i = 0; i < n; ++i) ids[i] = base + i * 7;
  return ids;
}

// Exact top-k by brute force over (id, vector) pairs.
std::vector<uint64_t> BruteForce(const std::vector<uint64_t>& ids, const std::vector<float>& vecs, const float* q,
                                 size_t k, Metric m) {
  std::vector<std::pair<float, uint64_t>> scored;
  for (size_t i = 0; i < ids.size(); ++i) {
    float s = 0;
    for (uint32_t j = 0; j < kDim; ++j) {
      float a = vecs[i * kDim + j];
      s += m == Metric::kL2 ? (a - q[j]) * (a - q[j]) : -a * q[j];
    }
    scored.emplace_back(s, ids[i]);
  }
  std::sort(scored.begin(), scored.end());
  std::vector<uint64_t> out;
  for (size_t i = 0; i < k && i < scored.size(); ++i) out.push_back(scored[i].second);
  return out;
}

// An index of `desc` holding n random vectors under Ids(n, id_base).
struct Filled {
  std::unique_ptr<VectorIndex> idx;
  std::vector<uint64_t> ids;
  std::vector<float> vecs;
};
Filled MakeFilled(const std::string& desc, size_t n, uint64_t id_base, uint64_t seed) {
  Filled f{Make(desc), Ids(n, id_base), RandomVectors(n, seed)};
  BOOST_REQUIRE(f.idx->Add(f.ids, f.vecs).ok());
  return f;
}

// AddRows with each vector copied to its own misaligned spot in a scratch
// buffer, as vectors lie in the log's read buffers.
Status AddAsRows(VectorIndex& idx, const std::vector<uint64_t>& ids, const std::vector<float>& vecs) {
  const size_t bytes = kDim * sizeof(float);
  std::vector<std::byte> scratch(ids.size() * (bytes + 3) + 1);
  std::vector<const std::byte*> rows;
  for (size_t i = 0; i < ids.size(); ++i) {
    // Backwards through the scratch buffer: rows need not follow one another.
    std::byte* at = scratch.data() + 1 + (ids.size() - 1 - i) * (bytes + 3);
    std::memcpy(at, vecs.data() + i * kDim, bytes);
    rows.push_back(at);
  }
  return idx.AddRows(ids, rows);
}

// What Serialize writes, whole, as FAISS's VectorIOReader wants it.
std::vector<uint8_t> SerializedBytes(const VectorIndex& idx) {
  std::vector<uint8_t> bytes;
  BOOST_REQUIRE(idx.Serialize([&](std::span<const std::byte> s) {
                     const auto* b = reinterpret_cast<const uint8_t*>(s.data());
                     bytes.insert(bytes.end(), b, b + s.size());
                     return Status::OK();
                   }).ok());
  return bytes;
}

}  // namespace

BOOST_AUTO_TEST_CASE(add_rows_adds_what_add_adds_to_every_index_type) {
  for (const char* desc : {"Flat", "HNSW32", "IVF4,Flat", "PQ4"}) {
    BOOST_TEST_CONTEXT(desc) {
      auto idx = Make(desc);
      const auto ids = Ids(50, 3);
      const auto vecs = RandomVectors(50, 5);
      BOOST_REQUIRE(AddAsRows(*idx, ids, vecs).ok());
      BOOST_TEST(idx->size() == 50u);
      auto ref = Make(desc);
      BOOST_REQUIRE(ref->Add(ids, vecs).ok());
      for (size_t i = 0; i < ids.size(); ++i) {
        auto a = idx->Reconstruct(ids[i]);
        auto b = ref->Reconstruct(ids[i]);
        BOOST_REQUIRE((a.ok() && b.ok()));
        BOOST_TEST(*a == *b, boost::test_tools::per_element());
      }
      // An id already present, or one given twice, adds nothing.
      const std::byte* row = reinterpret_cast<const std::byte*>(vecs.data());
      const std::vector<const std::byte*> two{row, row};
      Status dup = idx->AddRows(std::vector<uint64_t>{1000, ids[4]}, two);
      BOOST_TEST(dup.message().find("id " + std::to_string(ids[4])) != std::string::npos);
      BOOST_TEST(!idx->AddRows(std::vector<uint64_t>{1000, 1000}, two).ok());
      Status count = idx->AddRows(std::vector<uint64_t>{1000}, two);
      BOOST_TEST(count.message().find("1 ids with 2 vectors") != std::string::npos);
      BOOST_TEST(idx->size() == 50u);
      BOOST_TEST(!idx->Contains(1000));
    }
  }
}

BOOST_AUTO_TEST_CASE(flat_search_matches_brute_force_for_both_metrics) {
  for (Metric m : {Metric::kL2, Metric::kInnerProduct}) {
    auto idx = Make("Flat", m);
    auto ids = Ids(500, 1000);
    auto vecs = RandomVectors(500, 1);
    BOOST_REQUIRE(idx->Add(ids, vecs).ok());
    auto q = RandomVectors(10, 2);
    auto r = idx->Search(q, 5);
    BOOST_REQUIRE(r.ok());
    for (size_t i = 0; i < 10; ++i) {
      auto want = BruteForce(ids, vecs, q.data() + i * kDim, 5, m);
      std::vector<uint64_t> got(r->ids.begin() + i * 5, r->ids.begin() + (i + 1) * 5);
      BOOST_TEST(got == want, boost::test_tools::per_element());
    }
  }
}

// Transforms in front (PCA, OPQ) included: in front of IVF under FAISS's id
// map, the second removal aborted the process.
BOOST_AUTO_TEST_CASE(every_index_type_updates_and_removes_by_id) {
  for (std::string desc : {"Flat", "HNSW16", "IVF8,Flat", "IVF8,PQ4x4", "PQ4x4", "SQ8", "PCA16,IVF8,Flat",
                           "OPQ4,IVF8,PQ4x4", "PCA16,Flat", "IVF8,PQ8x4fs"}) {
    BOOST_TEST_CONTEXT(desc) {
      auto idx = Make(desc);
      auto ids = Ids(300, 5);
      auto vecs = RandomVectors(300, 3);
      BOOST_REQUIRE(idx->Add(ids, vecs).ok());
      BOOST_TEST(idx->size() == 300u);
      // Remove a third; update another third to vectors far from everything.
      std::vector<uint64_t> gone(ids.begin(), ids.begin() + 100);
      BOOST_REQUIRE(idx->Remove(gone).ok());
      std::vector<uint64_t> moved(ids.begin() + 100, ids.begin() + 200);
      BOOST_REQUIRE(idx->Remove(moved).ok());
      std::vector<float> far(moved.size() * kDim, 100.f);
      for (size_t i = 0; i < moved.size(); ++i) far[i * kDim] += static_cast<float>(i);
      BOOST_REQUIRE(idx->Add(moved, far).ok());
      BOOST_TEST(idx->size() == 200u);
      // Only a graph and IVF lists packed for fast scan (which refuse a real
      // removal, not the probe) keep what they cannot remove. IVF's hash-table
      // direct map once refused FAISS's batch selector, and IVF kept tombstones.
      const bool keeps = desc.find("HNSW") != std::string::npos || desc.find("fs") != std::string::npos;
      BOOST_TEST(idx->tombstones() == (keeps ? 200u : 0u));
      for (uint64_t id : gone) BOOST_REQUIRE(!idx->Contains(id));
      // Queries near the moved vectors find them, and never a removed id.
      auto r = idx->Search(std::span(far).first(10 * kDim), 3);
      BOOST_REQUIRE(r.ok());
      // Codes may not tell the far vectors apart (SQ8 clamps them to its trained range).
      const bool lossy = desc.find("PQ") != std::string::npos || desc.find("SQ") != std::string::npos;
      for (size_t q = 0; q < 10; ++q) {
        if (lossy)
          BOOST_TEST(std::count(moved.begin(), moved.end(), r->ids[q * 3]) == 1);
        else
          BOOST_TEST(r->ids[q * 3] == moved[q]);
        for (size_t j = 0; j < 3; ++j) BOOST_TEST(!std::count(gone.begin(), gone.end(), r->ids[q * 3 + j]));
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(hnsw_tombstones_are_filtered_then_compacted) {
  auto idx = Make("HNSW16");
  auto ids = Ids(200, 0);
  auto vecs = RandomVectors(200, 4);
  BOOST_REQUIRE(idx->Add(ids, vecs).ok());
  std::vector<uint64_t> gone(ids.begin(), ids.begin() + 150);
  BOOST_REQUIRE(idx->Remove(gone).ok());
  BOOST_TEST(idx->tombstones() == 150u);
  auto q = std::span(vecs).first(kDim);  // the first (removed) vector itself
  // HNSW is approximate, and its graph is built in parallel (no two builds
  // alike): before and after the rebuild, each search finds at least 8 of
  // the 10 true nearest live vectors, and never a removed one.
  const std::vector<uint64_t> live_ids(ids.begin() + 150, ids.end());
  const std::vector<float> live_vecs(vecs.begin() + 150 * kDim, vecs.end());
  const auto truth = BruteForce(live_ids, live_vecs, q.data(), 10, Metric::kL2);
  auto found_of_truth = [&](const SearchResults& r) {
    size_t n = 0;
    for (uint64_t id : r.ids) {
      BOOST_TEST((id == kNoId || !std::count(gone.begin(), gone.end(), id)));
      n += std::count(truth.begin(), truth.end(), id);
    }
    return n;
  };
  auto before = idx->Search(q, 10);
  BOOST_REQUIRE(before.ok());
  BOOST_TEST(found_of_truth(*before) >= 8u);
  BOOST_REQUIRE(idx->Compact().ok());
  BOOST_TEST(idx->tombstones() == 0u);
  BOOST_TEST(idx->size() == 50u);
  auto after = idx->Search(q, 10);
  BOOST_REQUIRE(after.ok());
  BOOST_TEST(found_of_truth(*after) >= 8u);
  // Regression: a compacted HNSW once lost its exact FAISS class and could
  // not be written (faiss::clone_index).
  BOOST_TEST(idx->Serialize([](std::span<const std::byte>) { return Status::OK(); }).ok());
  auto v = idx->Reconstruct(ids[160]);
  BOOST_REQUIRE(v.ok());
  BOOST_TEST(std::equal(v->begin(), v->end(), vecs.begin() + 160 * kDim));
}

// What a search leaves out (tombstones inside the index, the ids a caller
// skips) never costs a query its k hits: with most of an HNSW index removed,
// the first list FAISS returns is mostly tombstones, and the short queries go
// back for more.
BOOST_AUTO_TEST_CASE(skipped_ids_and_tombstones_leave_k_hits_of_the_rest) {
  for (std::string desc : {"PCA16,IVF8,Flat"}) {
    BOOST_TEST_CONTEXT(desc) {
      auto [idx, ids, vecs] = MakeFilled(desc, 1000, 1, 12);
      std::vector<uint64_t> gone(ids.begin(), ids.begin() + 600);
      BOOST_REQUIRE(idx->Remove(gone).ok());
      IdSet skip(ids.begin() + 600, ids.begin() + 800);
      skip.insert(5'000'000);  // not in the index: skipping it costs nothing
      std::vector<uint64_t> rest_ids(ids.begin() + 800, ids.end());
      std::vector<float> rest(vecs.begin() + 800 * kDim, vecs.end());
      constexpr size_t k = 10;
      auto r = idx->Search(rest, k, &skip);
      BOOST_REQUIRE(r.ok());
      size_t self_first = 0;
      for (size_t q = 0; q < rest_ids.size(); ++q) {
        std::span<const uint64_t> row(r->ids.data() + q * k, k);
        for (uint64_t id : row) {
          BOOST_TEST(id != kNoId);
          BOOST_TEST(std::count(rest_ids.begin(), rest_ids.end(), id) == 1, "id " << id << " was removed or skipped");
        }
        self_first += row[0] == rest_ids[q];
        if (desc == "Flat") {
          auto want = BruteForce(rest_ids, rest, rest.data() + q * kDim, k, Metric::kL2);
          BOOST_TEST(std::vector<uint64_t>(row.begin(), row.end()) == want, boost::test_tools::per_element());
        }
      }
      // Every query is a stored vector: it finds itself first (IVF8 probes
      // one list, which holds the query's own vector).
      BOOST_TEST(self_first >= rest_ids.size() * 95 / 100);
    }
  }
}

// A compaction runs beside adds and removes (the store's writers): what it
// copied and was removed since becomes a tombstone of the new index, what
// was removed before it was copied is left out, and what was added since is
// copied in later rounds or at the finish.
BOOST_AUTO_TEST_CASE(a_compaction_takes_the_adds_and_removes_made_while_it_ran) {
  auto [idx, ids, vecs] = MakeFilled("HNSW16", 400, 0, 21);
  std::map<uint64_t, std::vector<float>> model;
  for (size_t i = 0; i < ids.size(); ++i) model[ids[i]].assign(vecs.begin() + i * kDim, vecs.begin() + (i + 1) * kDim);
  auto remove = [&](std::span<const uint64_t> gone) {
    BOOST_REQUIRE(idx->Remove(gone).ok());
    for (uint64_t id : gone) model.erase(id);
  };
  auto add = [&](std::vector<uint64_t> add_ids, uint64_t seed) {
    auto v = RandomVectors(add_ids.size(), seed);
    BOOST_REQUIRE(idx->Add(add_ids, v).ok());
    for (size_t i = 0; i < add_ids.size(); ++i)
      model[add_ids[i]].assign(v.begin() + i * kDim, v.begin() + (i + 1) * kDim);
  };
  remove(std::span(ids).first(100));
  auto c = idx->BeginCompaction();
  BOOST_REQUIRE(c.ok());
  BOOST_REQUIRE(*c != nullptr);
  BOOST_TEST(!idx->BeginCompaction().ok());  // one at a time
  remove(std::span(ids).subspan(100, 20));     // before it copied them: left out
  BOOST_REQUIRE(*(*c)->CopyNext());
  BOOST_REQUIRE((*c)->AddCopied().ok());
  remove(std::span(ids).subspan(120, 30));  // copied: 30 tombstones
  std::vector<uint64_t> rewritten(ids.begin() + 150, ids.begin() + 170);
  remove(rewritten);  // copied: 20 more, and 20 new slots
  add(rewritten, 22);
  const auto fresh_ids = Ids(1500, 100'000);
  add(fresh_ids, 23);  // more new slots than the finish takes: copied in a round
  BOOST_REQUIRE(*(*c)->CopyNext());
  BOOST_REQUIRE((*c)->AddCopied().ok());
  remove(std::span(fresh_ids).first(50));  // copied in that round: 50 more
  add(Ids(30, 500'000), 24);                        // left for the finish
  BOOST_TEST(!*(*c)->CopyNext());
  BOOST_REQUIRE(idx->FinishCompaction(std::move(*c)).ok());

  BOOST_TEST(idx->tombstones() == 100u);
  BOOST_TEST(idx->size() == model.size());
  std::vector<float> all;
  for (const auto& [id, v] : model) {
    auto got = idx->Reconstruct(id);
    BOOST_REQUIRE_MESSAGE(got.ok(), "id " << id << ": " << got.status().ToString());
    BOOST_TEST(*got == v, "id " << id);
    all.insert(all.end(), v.begin(), v.end());
  }
  auto check_search = [&](const VectorIndex& x) {
    auto r = x.Search(all, 5);
    BOOST_REQUIRE(r.ok());
    size_t self_first = 0, q = 0;
    for (const auto& [id, v] : model) {
      self_first += r->ids[q * 5] == id;
      for (size_t j = 0; j < 5; ++j) BOOST_TEST(model.count(r->ids[q * 5 + j]) == 1u, "a removed id was found");
      ++q;
    }
    BOOST_TEST(self_first >= model.size() * 95 / 100);
  };
  check_search(*idx);
  // The new index and its tombstones serialize and load as one.
  std::vector<std::byte> bytes;
  BOOST_REQUIRE(idx->Serialize([&](std::span<const std::byte> b) {
                     bytes.insert(bytes.end(), b.begin(), b.end());
                     return Status::OK();
                   }).ok());
  auto back = LoadFaissIndex(idx->spec(), bytes);
  BOOST_REQUIRE_MESSAGE(back.ok(), back.status().ToString());
  BOOST_TEST((*back)->tombstones() == 100u);
  check_search(**back);
  BOOST_REQUIRE(idx->Compact().ok());
  BOOST_TEST(idx->tombstones() == 0u);
  check_search(*idx);
}

BOOST_AUTO_TEST_CASE(bad_input_gets_an_error_naming_it) {
  auto idx = Make("Flat");
  auto vecs = RandomVectors(2, 5);
  std::vector<uint64_t> two{1, 1};
  Status dup = idx->Add(two, vecs);
  BOOST_TEST(dup.message().find("id 1 ") != std::string::npos, dup.ToString());
  std::vector<uint64_t> one{9};
  Status dim = idx->Add(one, vecs);
  BOOST_TEST(dim.message().find("dimension is 16") != std::string::npos, dim.ToString());
  BOOST_TEST(idx->size() == 0u);  // nothing half-added
  auto bad = NewFaissIndex({kDim, Metric::kL2, "NoSuchIndex99"});
  BOOST_TEST(bad.status().message().find("NoSuchIndex99") != std::string::npos);
  auto ivf = NewFaissIndex({kDim, Metric::kL2, "IVF8,Flat"});
  BOOST_REQUIRE(ivf.ok());
  BOOST_TEST((*ivf)->Add(one, std::span(vecs).first(kDim)).message().find("trained") != std::string::npos);
  auto q = idx->Search(std::span(vecs).first(kDim + 1), 1);
  BOOST_TEST(q.status().message().find("multiple of dimension") != std::string::npos);
  // A k whose results could never fit is an error, not std::bad_alloc; a k
  // above the index's size only pads.
  BOOST_REQUIRE(idx->Add(std::vector<uint64_t>{1, 2}, vecs).ok());
  for (size_t k : {size_t{1} << 40, SIZE_MAX / 2}) {
    auto huge = idx->Search(vecs, k);
    BOOST_TEST(huge.status().code() == Status::Code::kInvalidArgument);
    BOOST_TEST(huge.status().message().find("k = " + std::to_string(k) + " for 2 queries") != std::string::npos,
               huge.status().ToString());
  }
  auto padded = idx->Search(vecs, 1000);
  BOOST_REQUIRE(padded.ok());
  BOOST_TEST(padded->ids.size() == 2000u);
  BOOST_TEST(padded->ids[2] == kNoId);
}

// A training sample with a NaN or infinite component is refused, naming it,
// and leaves the index untrained. FAISS's k-means refuses it too, but a
// scalar quantizer (SQ8) takes it into its ranges and then encodes every
// vector against NaN.
BOOST_AUTO_TEST_CASE(a_training_sample_that_is_not_finite_is_refused_naming_row_and_component) {
  for (const char* desc : {"SQ8", "IVF4,Flat"}) {
    BOOST_TEST_CONTEXT(desc) {
      auto idx = NewFaissIndex({kDim, Metric::kL2, desc});
      BOOST_REQUIRE(idx.ok());
      auto sample = RandomVectors(500, 3);
      sample[7 * kDim + 2] = std::numeric_limits<float>::quiet_NaN();
      Status nan = (*idx)->Train(sample);
      BOOST_TEST(nan.message().find("training sample row 7: component 2 is NaN") != std::string::npos, nan.ToString());
      sample[7 * kDim + 2] = std::numeric_limits<float>::infinity();
      Status inf = (*idx)->Train(sample);
      BOOST_TEST(inf.message().find("training sample row 7: component 2 is infinite") != std::string::npos, inf.ToString());
      BOOST_TEST(!(*idx)->is_trained());
    }
  }
}

// Flat, and IVF over a Flat quantizer, compute distances by one BLAS product
// from FAISS's threshold of queries a call on (the store then takes at least
// that many a chunk); a graph has no such step.
BOOST_AUTO_TEST_CASE(indexes_searched_by_blas_from_a_call_size_on_name_that_size) {
  const auto blas = static_cast<size_t>(faiss::distance_compute_blas_threshold);
  BOOST_REQUIRE(blas > 1);
  const std::pair<const char*, size_t> want[] = {{"Flat", blas}, {"IVF8,Flat", blas}, {"HNSW16", 1}};
  for (const auto& [desc, floor] : want) {
    BOOST_TEST_CONTEXT(desc) {
      auto [idx, ids, vecs] = MakeFilled(desc, 300, 11, 6);
      BOOST_TEST(idx->SearchBatchFloor() == floor);
    }
  }
}

BOOST_AUTO_TEST_CASE(serialized_index_loads_with_ids_tombstones_and_results) {
  for (std::string desc : {"PCA16,IVF8,Flat"}) {
    BOOST_TEST_CONTEXT(desc) {
      auto [idx, ids, vecs] = MakeFilled(desc, 300, 11, 6);
      BOOST_REQUIRE(idx->Remove(std::span(ids).first(40)).ok());
      std::vector<std::byte> bytes;
      size_t pieces = 0;
      BOOST_REQUIRE(idx->Serialize([&](std::span<const std::byte> s) {
                         bytes.insert(bytes.end(), s.begin(), s.end());
                         ++pieces;
                         return Status::OK();
                       }).ok());
      BOOST_TEST(pieces >= 1u);
      auto back = LoadFaissIndex(idx->spec(), bytes);
      BOOST_REQUIRE_MESSAGE(back.ok(), back.status().ToString());
      BOOST_TEST((*back)->size() == idx->size());
      BOOST_TEST((*back)->tombstones() == idx->tombstones());
      BOOST_TEST((*back)->SearchBatchFloor() == idx->SearchBatchFloor());
      auto q = RandomVectors(5, 7);
      auto a = idx->Search(q, 4), b = (*back)->Search(q, 4);
      BOOST_REQUIRE(a.ok());
      BOOST_REQUIRE(b.ok());
      BOOST_TEST(a->ids == b->ids, boost::test_tools::per_element());
      // The wrong dimension or a damaged table is refused.
      BOOST_TEST(!LoadFaissIndex({kDim + 1, Metric::kL2, desc}, bytes).ok());
      bytes[bytes.size() - 3] ^= std::byte{0x40};
      BOOST_TEST(!LoadFaissIndex(idx->spec(), bytes).ok());
    }
  }
}

// The FAISS section must load in stock FAISS: Debian's python3-faiss.
BOOST_AUTO_TEST_CASE(faiss_section_loads_in_stock_faiss_read_index) {
  // Debian's interpreter, where python3-faiss lives (not a pyenv's python3).
  if (std::system("/usr/bin/python3 -c 'import faiss' >/dev/null 2>&1") != 0) {
    BOOST_FAIL("python3-faiss is not installed (./vecwal.sh installs it)");
  }
  test::TempDir dir;
  auto idx = Make("HNSW16");
  BOOST_REQUIRE(idx->Add(Ids(100, 0), RandomVectors(100, 8)).ok());
  std::string path = dir / "index.faiss";
  std::ofstream out(path, std::ios::binary);
  BOOST_REQUIRE(idx->Serialize([&](std::span<const std::byte> s) {
                     out.write(reinterpret_cast<const char*>(s.data()), static_cast<std::streamsize>(s.size()));
                     return Status::OK();
                   }).ok());
  out.close();
  std::string cmd = "/usr/bin/python3 -c \"import faiss; i = faiss.read_index('" + path +
                    "'); assert i.ntotal == 100 and i.d == 16, (i.ntotal, i.d)\"";
  BOOST_TEST(std::system(cmd.c_str()) == 0);
}

BOOST_AUTO_TEST_CASE(flat_removal_moves_the_last_vector_and_keeps_every_other_exact) {
  for (const std::string desc : {"Flat", "SQ8"}) {
    auto idx = Make(desc);
    auto ids = Ids(300, 5);
    auto vecs = RandomVectors(300, 11);
    BOOST_REQUIRE(idx->Add(ids, vecs).ok());
    std::vector<std::vector<float>> before;
    for (uint64_t id : ids) before.push_back(*idx->Reconstruct(id));
    // The first, one in the middle, the last, a batch, and an id twice.
    std::vector<uint64_t> gone = {ids[0], ids[150], ids[299], ids[10], ids[11], ids[12], ids[150]};
    BOOST_REQUIRE(idx->Remove(gone).ok());
    std::set<uint64_t> removed(gone.begin(), gone.end());
    BOOST_TEST(idx->size() == 300 - removed.size());
    std::vector<uint64_t> left_ids;
    std::vector<float> left_vecs;
    for (size_t i = 0; i < ids.size(); ++i) {
      if (removed.count(ids[i])) {
        BOOST_TEST(!idx->Contains(ids[i]));
        continue;
      }
      auto v = idx->Reconstruct(ids[i]);
      BOOST_REQUIRE(v.ok());
      BOOST_TEST(*v == before[i], boost::test_tools::per_element());
      left_ids.push_back(ids[i]);
      left_vecs.insert(left_vecs.end(), v->begin(), v->end());
    }
    // Every stored vector still finds itself first, under its own id.
    auto r = idx->Search(left_vecs, 1);
    BOOST_REQUIRE(r.ok());
    for (size_t i = 0; i < left_ids.size(); ++i) BOOST_TEST(r->ids[i] == left_ids[i]);
    // An upsert after removals lands under its id, and a round trip keeps all.
    BOOST_REQUIRE(idx->Add(std::vector<uint64_t>{ids[0]}, std::span(vecs).first(kDim)).ok());
    std::vector<std::byte> bytes;
    BOOST_REQUIRE(idx->Serialize([&](std::span<const std::byte> b) {
                       bytes.insert(bytes.end(), b.begin(), b.end());
                       return Status::OK();
                     }).ok());
    auto back = LoadFaissIndex({kDim, Metric::kL2, desc}, bytes);
    BOOST_REQUIRE(back.ok());
    BOOST_TEST((*back)->size() == idx->size());
    BOOST_TEST(*(*back)->Reconstruct(ids[0]) == *idx->Reconstruct(ids[0]), boost::test_tools::per_element());
  }
}

// Adds that outgrow a flat index's storage move it: a copy of the whole
// index, made holding it exclusively. PrepareRoom makes that copy ahead,
// with the index held shared (the caller's searches go on), and TakeRoom puts
// it in place; but not where the index changed since: a removal and an add
// leave the size as it was and the rows not.
BOOST_AUTO_TEST_CASE(a_room_made_ahead_is_put_in_place_only_if_the_index_did_not_change) {
  for (const std::string desc : {"Flat", "SQ8"}) {
    BOOST_TEST_CONTEXT(desc) {
      auto f = MakeFilled(desc, 300, 5, 11);
      std::vector<std::vector<float>> before;
      for (uint64_t id : f.ids) before.push_back(*f.idx->Reconstruct(id));
      const size_t cap = f.idx->capacity();
      BOOST_TEST(cap >= 300u);
      BOOST_TEST(f.idx->PrepareRoom(cap - 300) == nullptr);  // fits: nothing moves
      const size_t more = cap - 300 + 1;
      auto room = f.idx->PrepareRoom(more);
      BOOST_REQUIRE(room != nullptr);
      BOOST_TEST(f.idx->capacity() == cap);  // made beside readers: the index is as it was
      f.idx->TakeRoom(*room);
      room.reset();  // frees the old storage
      const size_t grown = f.idx->capacity();
      BOOST_TEST(grown >= 300 + more);
      for (size_t i = 0; i < f.ids.size(); ++i)
        BOOST_TEST(*f.idx->Reconstruct(f.ids[i]) == before[i], boost::test_tools::per_element());
      const auto new_ids = Ids(more, 1'000'000);
      const auto new_vecs = RandomVectors(more, 12);
      BOOST_REQUIRE(AddAsRows(*f.idx, new_ids, new_vecs).ok());
      BOOST_TEST(f.idx->capacity() == grown);  // the adds fit: nothing moved again
      auto r = f.idx->Search(new_vecs, 1);
      BOOST_REQUIRE(r.ok());
      for (size_t i = 0; i < more; ++i) BOOST_TEST(r->ids[i] == new_ids[i]);

      auto g = MakeFilled(desc, 300, 5, 11);
      auto stale = g.idx->PrepareRoom(g.idx->capacity() - 300 + 1);
      BOOST_REQUIRE(stale != nullptr);
      BOOST_REQUIRE(g.idx->Remove(std::vector<uint64_t>{g.ids[0]}).ok());  // the last row moves into its place
      const auto added = RandomVectors(1, 13);
      BOOST_REQUIRE(g.idx->Add(std::vector<uint64_t>{77}, added).ok());
      const size_t kept_cap = g.idx->capacity();
      g.idx->TakeRoom(*stale);
      BOOST_TEST(g.idx->capacity() == kept_cap);
      auto back = g.idx->Search(added, 1);
      BOOST_REQUIRE(back.ok());
      BOOST_TEST(back->ids[0] == 77u);
      for (size_t i = 1; i < g.ids.size(); ++i)
        BOOST_TEST(*g.idx->Reconstruct(g.ids[i]) == before[i], boost::test_tools::per_element());
    }
  }
}

// Adds ids from 1,000,000 on to `f` until its storage is just over half
// full, where a growth begins.
void FillPastHalf(Filled& f) {
  for (uint64_t id = 1'000'000; f.idx->size() < f.idx->capacity() / 2 + 1; ++id)
    BOOST_REQUIRE(f.idx->Add(std::vector<uint64_t>{id}, RandomVectors(1, id)).ok());
}

// A growth of a flat index's storage (BeginGrowth) is copied in steps
// between writes: removals move the last row into a hole below what it has
// copied and shrink the storage, adds fill the storage again, over rows it
// copied too. What TakeGrowth puts in place is the live storage, row for row,
// at twice the capacity. Random removals, adds and steps, against a model.
BOOST_AUTO_TEST_CASE(a_growth_copied_between_removals_and_adds_is_the_live_index_when_taken) {
  for (const std::string desc : {"Flat", "SQ8"}) {
    for (uint64_t seed : {1, 2, 3, 4}) {
      BOOST_TEST_CONTEXT(desc << ", seed " << seed) {
        auto f = MakeFilled(desc, 200, 5, seed);
        std::map<uint64_t, std::vector<float>> model;  // id -> its vector as the index gives it back
        auto add = [&](uint64_t id) {
          const auto v = RandomVectors(1, id);
          BOOST_REQUIRE(AddAsRows(*f.idx, {id}, v).ok());
          model[id] = *f.idx->Reconstruct(id);
        };
        for (uint64_t id : f.ids) model[id] = *f.idx->Reconstruct(id);
        uint64_t next_id = 1'000'000;
        while (f.idx->size() < f.idx->capacity() / 2 + 1) add(next_id++);
        const size_t cap = f.idx->capacity();
        BOOST_TEST(!f.idx->BeginGrowth((cap + 1) * kDim * sizeof(float)));  // smaller than asked: none
        BOOST_REQUIRE(f.idx->BeginGrowth(0));
        BOOST_TEST(f.idx->TakeGrowth() == nullptr);  // nothing copied yet
        std::mt19937_64 rng(seed);
        int steps = 0, removals = 0;
        for (bool more = true; more;) {
          const auto pick = rng() % 4;
          if (pick == 0 && !model.empty()) {
            auto it = std::next(model.begin(), static_cast<long>(rng() % model.size()));
            BOOST_REQUIRE(f.idx->Remove(std::vector<uint64_t>{it->first}).ok());
            model.erase(it);
            ++removals;
          } else if (pick == 1 && f.idx->size() < cap) {
            add(next_id++);
          } else {
            more = f.idx->GrowStep((1 + rng() % 6) * kDim);  // a row or a few a step (SQ8: a byte a component)
            ++steps;
          }
        }
        BOOST_TEST(steps > 10);
        BOOST_TEST(removals > 10);
        // Writes after it turned whole are taken with it (a removal first: the
        // storage may be full).
        BOOST_REQUIRE(f.idx->Remove(std::vector<uint64_t>{model.begin()->first}).ok());
        model.erase(model.begin());
        add(next_id++);
        auto old = f.idx->TakeGrowth();
        BOOST_REQUIRE(old != nullptr);
        old.reset();
        BOOST_TEST(f.idx->capacity() == 2 * cap);
        BOOST_TEST(f.idx->size() == model.size());
        for (const auto& [id, v] : model) BOOST_TEST(*f.idx->Reconstruct(id) == v, boost::test_tools::per_element());
        if (desc == "Flat") {  // each vector finds itself first, under its own id
          std::vector<float> q;
          std::vector<uint64_t> want;
          for (const auto& [id, v] : model) {
            q.insert(q.end(), v.begin(), v.end());
            want.push_back(id);
          }
          auto r = f.idx->Search(q, 1);
          BOOST_REQUIRE(r.ok());
          for (size_t i = 0; i < want.size(); ++i) BOOST_TEST(r->ids[i] == want[i]);
        }
      }
    }
  }
}

// Room asked for that the storage cannot hold, while a growth that can is
// under way, finishes the growth (copying only what it had not) rather than
// copying the whole storage again into a room of its own.
BOOST_AUTO_TEST_CASE(room_the_storage_cannot_hold_finishes_the_growth_under_way) {
  auto f = MakeFilled("Flat", 200, 5, 23);
  FillPastHalf(f);
  const size_t cap = f.idx->capacity(), held = f.idx->size();
  BOOST_REQUIRE(f.idx->BeginGrowth(0));
  BOOST_TEST(f.idx->GrowStep(kDim * sizeof(float)));  // one row of many
  BOOST_TEST(f.idx->PrepareRoom(cap - held) == nullptr);  // fits as it is
  BOOST_TEST(f.idx->TakeGrowth() == nullptr);  // not whole yet
  BOOST_TEST(f.idx->PrepareRoom(cap - held + 1) == nullptr);  // finished, nothing else made
  auto old = f.idx->TakeGrowth();
  BOOST_REQUIRE(old != nullptr);
  BOOST_TEST(f.idx->capacity() == 2 * cap);
  const auto more = RandomVectors(cap - held + 1, 24);
  BOOST_REQUIRE(AddAsRows(*f.idx, Ids(cap - held + 1, 5'000'000), more).ok());
  BOOST_TEST(f.idx->capacity() == 2 * cap);  // the adds fit
  auto r = f.idx->Search(f.vecs, 1);
  BOOST_REQUIRE(r.ok());
  for (size_t i = 0; i < f.ids.size(); ++i) BOOST_TEST(r->ids[i] == f.ids[i]);
}

// Adds that outgrow the storage before its growth is taken grow it as much
// themselves: the growth ends, and nothing is put in place.
BOOST_AUTO_TEST_CASE(a_growth_ends_where_adds_outgrow_the_storage_first) {
  auto f = MakeFilled("Flat", 200, 5, 21);
  FillPastHalf(f);
  const size_t cap = f.idx->capacity();
  BOOST_REQUIRE(f.idx->BeginGrowth(0));
  BOOST_TEST(f.idx->GrowStep(kDim * sizeof(float)));  // one row of many
  const auto more = RandomVectors(cap - f.idx->size() + 1, 22);
  BOOST_REQUIRE(f.idx->Add(Ids(cap - f.idx->size() + 1, 5'000'000), more).ok());
  const size_t grown = f.idx->capacity();
  BOOST_TEST(grown > cap);
  BOOST_TEST(!f.idx->GrowStep(1 << 20));
  BOOST_TEST(f.idx->TakeGrowth() == nullptr);
  BOOST_TEST(f.idx->capacity() == grown);
  auto r = f.idx->Search(std::span(more).first(kDim), 1);
  BOOST_REQUIRE(r.ok());
  BOOST_TEST(r->ids[0] == 5'000'000u);
}

// An export writes exactly what Serialize wrote when it began, however the
// index changes while it goes: removals move rows (each one the export has
// not written yet must be kept as it was), adds reuse the freed rows. Its
// pieces end anywhere, inside a row too; that row may change before the next
// piece, which must finish it as it was begun. (The small index changes a
// quarter of its rows between pieces, so the row a piece ends inside is hit
// often; the large one runs through several pieces and headers.)
BOOST_AUTO_TEST_CASE(export_writes_the_index_as_it_was_when_it_began) {
  struct Shape {
    size_t rows, changes, max_room;
  };
  for (Shape shape : {Shape{3000, 20, 20000}, Shape{64, 16, 100}})
    for (Metric m : {Metric::kL2, Metric::kInnerProduct}) {
      auto idx = Make("Flat", m);
      const auto ids = Ids(shape.rows, 1);
      BOOST_REQUIRE(idx->Add(ids, RandomVectors(ids.size(), 5)).ok());
      BOOST_REQUIRE(idx->Remove(std::vector<uint64_t>{ids[10], ids.back()}).ok());  // slots with history
      std::vector<std::byte> expected;
      BOOST_REQUIRE(idx->Serialize([&](std::span<const std::byte> b) {
        expected.insert(expected.end(), b.begin(), b.end());
        return Status::OK();
      }).ok());
      auto ex = idx->BeginExport();
      BOOST_REQUIRE(ex.ok());
      BOOST_REQUIRE(*ex != nullptr);
      std::vector<std::byte> got;
      std::mt19937_64 rng(11);
      uint64_t next_id = 1u << 30;
      std::vector<uint64_t> live(ids.begin() + 11, ids.end() - 1);
      live.insert(live.end(), ids.begin(), ids.begin() + 10);
      for (bool more = true; more;) {
        std::vector<std::byte> room(1 + rng() % shape.max_room);
        auto r = (*ex)->Next(room);
        BOOST_REQUIRE_MESSAGE(r.ok(), r.status().ToString());
        BOOST_REQUIRE(*r <= room.size());
        got.insert(got.end(), room.begin(), room.begin() + static_cast<ptrdiff_t>(*r));
        more = *r == room.size();
        // Between pieces: remove live rows on both sides of the cursor, add
        // as many new ones.
        std::vector<uint64_t> gone;
        for (size_t i = 0; i < shape.changes; ++i) {
          const size_t at = rng() % live.size();
          gone.push_back(live[at]);
          live[at] = live.back();
          live.pop_back();
        }
        BOOST_REQUIRE(idx->Remove(gone).ok());
        std::vector<uint64_t> fresh;
        for (size_t i = 0; i < shape.changes; ++i) fresh.push_back(next_id++);
        BOOST_REQUIRE(idx->Add(fresh, RandomVectors(fresh.size(), next_id)).ok());
        live.insert(live.end(), fresh.begin(), fresh.end());
      }
      BOOST_TEST(got.size() == expected.size());
      BOOST_TEST((got == expected), shape.rows << " rows");
      ex->reset();
      // The export is gone: the next one begins afresh.
      auto again = idx->BeginExport();
      BOOST_REQUIRE(again.ok());
      BOOST_TEST(*again != nullptr);
    }
  // Index types without an export say so; their callers copy.
  auto hnsw = Make("HNSW16");
  auto none = hnsw->BeginExport();
  BOOST_REQUIRE(none.ok());
  BOOST_TEST(*none == nullptr);
}

// The flat loader places vectors straight into the index's storage; what it
// builds equals what FAISS's own reader builds from the same bytes, whatever
// the pieces it is fed. Other layouts get no loader, and short input fails.
BOOST_AUTO_TEST_CASE(flat_loader_builds_what_faiss_read_index_builds) {
  for (Metric m : {Metric::kL2, Metric::kInnerProduct}) {
    auto idx = Make("Flat", m);
    const auto ids = Ids(2500, 3);
    const auto vecs = RandomVectors(ids.size(), 8);
    BOOST_REQUIRE(idx->Add(ids, vecs).ok());
    BOOST_REQUIRE(idx->Remove(std::vector<uint64_t>{ids[5], ids[100]}).ok());
    std::vector<std::byte> bytes;
    BOOST_REQUIRE(idx->Serialize([&](std::span<const std::byte> b) {
      bytes.insert(bytes.end(), b.begin(), b.end());
      return Status::OK();
    }).ok());
    const IndexSpec spec{kDim, m, "Flat"};
    auto ref = LoadFaissIndex(spec, bytes);
    BOOST_REQUIRE(ref.ok());
    auto head = std::span<const std::byte>(bytes).first(std::min(bytes.size(), kLoaderHeadBytes));
    auto loader = NewIndexLoader(spec, head, bytes.size());
    BOOST_REQUIRE(loader != nullptr);
    std::mt19937_64 rng(4);
    for (size_t at = 0; at < bytes.size();) {
      const size_t n = std::min<size_t>(bytes.size() - at, 1 + rng() % 9000);
      BOOST_REQUIRE(loader->Feed(std::span<const std::byte>(bytes).subspan(at, n)).ok());
      at += n;
    }
    auto built = loader->Finish();
    BOOST_REQUIRE_MESSAGE(built.ok(), built.status().ToString());
    BOOST_TEST((*built)->size() == (*ref)->size());
    BOOST_TEST((*built)->SearchBatchFloor() == static_cast<size_t>(faiss::distance_compute_blas_threshold));
    BOOST_TEST((*ref)->SearchBatchFloor() == static_cast<size_t>(faiss::distance_compute_blas_threshold));
    for (uint64_t id : ids) {
      BOOST_REQUIRE((*built)->Contains(id) == (*ref)->Contains(id));
      if ((*ref)->Contains(id)) BOOST_REQUIRE((*(*built)->Reconstruct(id) == *(*ref)->Reconstruct(id)));
    }
    const auto q = RandomVectors(5, 77);
    auto a = (*built)->Search(q, 10), b = (*ref)->Search(q, 10);
    BOOST_REQUIRE(a.ok() && b.ok());
    BOOST_TEST((a->ids == b->ids));
    // It still takes writes: a removal moves rows in the storage it filled.
    BOOST_TEST((*built)->Remove(std::vector<uint64_t>{ids[7]}).ok());
    BOOST_TEST((*built)->Add(std::vector<uint64_t>{1u << 20}, RandomVectors(1, 9)).ok());
    // A spec of another metric or dimension gets no loader (and FAISS's reader says why).
    const IndexSpec other{kDim + 1, m, "Flat"};
    BOOST_TEST(NewIndexLoader(other, head, bytes.size()) == nullptr);
    // The tail read ahead (as a checkpoint load does) builds the same index,
    // and a streamed tail byte that differs from it is an error.
    for (bool flip : {false, true}) {
      auto early = NewIndexLoader(spec, head, bytes.size());
      BOOST_REQUIRE(early != nullptr);
      const size_t t = static_cast<size_t>(early->tail_offset());
      BOOST_REQUIRE(t < bytes.size());
      std::vector<std::byte> tail(bytes.begin() + t, bytes.end());
      BOOST_TEST(!early->FeedTail(std::span(tail).first(tail.size() - 1)).ok());  // not the whole tail
      if (flip) tail[tail.size() / 2] ^= std::byte{1};
      BOOST_REQUIRE(early->FeedTail(tail).ok());
      Status fed;
      for (size_t at = 0; at < bytes.size() && fed.ok(); at += 4000)
        fed = early->Feed(std::span<const std::byte>(bytes).subspan(at, std::min<size_t>(4000, bytes.size() - at)));
      if (flip) {
        BOOST_TEST(fed.IsCorruption(), fed.ToString());
        continue;
      }
      BOOST_REQUIRE_MESSAGE(fed.ok(), fed.ToString());
      auto e = early->Finish();
      BOOST_REQUIRE_MESSAGE(e.ok(), e.status().ToString());
      BOOST_TEST((*e)->size() == (*ref)->size());
      for (uint64_t id : ids) BOOST_REQUIRE((*e)->Contains(id) == (*ref)->Contains(id));
      auto c = (*e)->Search(q, 10);
      BOOST_REQUIRE(c.ok());
      BOOST_TEST((c->ids == b->ids));
    }
    // Short input fails at Finish.
    auto shorted = NewIndexLoader(spec, head, bytes.size());
    BOOST_REQUIRE(shorted != nullptr);
    BOOST_REQUIRE(shorted->Feed(std::span<const std::byte>(bytes).first(bytes.size() - 8)).ok());
    BOOST_TEST(!shorted->Finish().ok());
  }
  auto hnsw = Make("HNSW16");
  BOOST_REQUIRE(hnsw->Add(Ids(50, 1), RandomVectors(50, 2)).ok());
  std::vector<std::byte> hb;
  BOOST_REQUIRE(hnsw->Serialize([&](std::span<const std::byte> b) {
    hb.insert(hb.end(), b.begin(), b.end());
    return Status::OK();
  }).ok());
  BOOST_TEST(NewIndexLoader({kDim, Metric::kL2, "HNSW16"}, std::span<const std::byte>(hb).first(std::min(hb.size(), kLoaderHeadBytes)), hb.size()) == nullptr);
}

// Flat adds place the vectors in FAISS's storage themselves (no zero-fill
// first): the index must be, byte for byte, what IndexIDMap2::add_with_ids
// builds, and its reverse map must answer as FAISS's does.
BOOST_AUTO_TEST_CASE(flat_adds_build_what_faiss_add_with_ids_builds) {
  for (Metric m : {Metric::kL2, Metric::kInnerProduct}) {
    auto idx = Make("Flat", m);
    idx->Reserve(700);  // some adds fit the reserved room, later ones grow past it
    faiss::IndexIDMap2 ref(m == Metric::kL2 ? static_cast<faiss::IndexFlat*>(new faiss::IndexFlatL2(kDim))
                                            : new faiss::IndexFlatIP(kDim));
    ref.own_fields = true;
    faiss::Index::idx_t slot = 0;
    bool rows = false;  // batches alternate between Add and AddRows
    for (size_t batch : {1, 300, 7, 500, 64}) {
      const auto vecs = RandomVectors(batch, 100 + batch);
      if ((rows = !rows)) BOOST_REQUIRE(AddAsRows(*idx, Ids(batch, 1000 * batch), vecs).ok());
      else BOOST_REQUIRE(idx->Add(Ids(batch, 1000 * batch), vecs).ok());
      std::vector<faiss::Index::idx_t> slots(batch);
      for (auto& s : slots) s = slot++;
      ref.add_with_ids(static_cast<faiss::Index::idx_t>(batch), vecs.data(), slots.data());
    }
    std::vector<std::byte> ours;
    BOOST_REQUIRE(idx->Serialize([&](std::span<const std::byte> b) {
      ours.insert(ours.end(), b.begin(), b.end());
      return Status::OK();
    }).ok());
    faiss::VectorIOWriter w;
    faiss::write_index(&ref, &w);
    BOOST_REQUIRE(ours.size() > w.data.size());
    BOOST_TEST(std::memcmp(ours.data(), w.data.data(), w.data.size()) == 0);
    for (size_t batch : {1, 300, 7, 500, 64}) {  // by id, through the reverse map
      const auto ids = Ids(batch, 1000 * batch);
      const auto vecs = RandomVectors(batch, 100 + batch);
      for (size_t i : {size_t{0}, batch / 2, batch - 1}) {
        auto v = idx->Reconstruct(ids[i]);
        BOOST_REQUIRE(v.ok());
        BOOST_TEST(std::equal(v->begin(), v->end(), vecs.begin() + i * kDim));
      }
    }
  }
}

namespace {
// Resident pages of [p, p + len), by mincore.
size_t ResidentPages(std::byte* p, size_t len) {
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> v((len + page - 1) / page);
  if (::mincore(p, len, v.data()) != 0) return 0;
  return static_cast<size_t>(std::count_if(v.begin(), v.end(), [](unsigned char c) { return c & 1; }));
}
}  // namespace

// Several faulting threads share the work but never run past frontier + lead:
// pages faulted past the last write would be resident memory for nothing.
BOOST_AUTO_TEST_CASE(prefaulter_threads_fault_up_to_the_lead_and_no_further) {
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const size_t len = 64 << 20, lead = 16 << 20;
  void* m = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  BOOST_REQUIRE(m != MAP_FAILED);
  auto* p = static_cast<std::byte*>(m);
  if (::madvise(p, page, MADV_POPULATE_WRITE) != 0) {  // the kernel lacks it (before 5.14)
    ::munmap(m, len);
    BOOST_TEST_MESSAGE("skipped: no MADV_POPULATE_WRITE");
    return;
  }
  auto wait_for = [&](size_t bytes) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (ResidentPages(p, len) * page < bytes && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return ResidentPages(p, len) * page;
  };
  {
    index::PagePrefaulter pf(p, p + len, lead, 2);
    pf.Advance(p + (8 << 20));
    BOOST_TEST(wait_for((8 << 20) + lead) >= (8 << 20) + lead);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // time to overrun, were it to
    BOOST_TEST(ResidentPages(p, len) * page <= (8 << 20) + lead);
    pf.Advance(p + len);
    BOOST_TEST(wait_for(len) == len);
  }
  ::munmap(m, len);
}

// The id tables are open-addressed with power-of-two buckets: ids that differ
// only in their high bits (shard << 40 | n, k << 32) must still spread, or
// every add probes past all the others (a million such ids would take hours).
BOOST_AUTO_TEST_CASE(ids_that_differ_only_in_high_bits_spread_over_the_tables, *boost::unit_test::timeout(60)) {
  auto idx = Make("Flat");
  constexpr size_t kN = 100000;
  std::vector<uint64_t> ids(kN);
  for (size_t i = 0; i < kN; ++i) ids[i] = uint64_t{i + 1} << 40;
  const auto vecs = RandomVectors(kN, 21);
  const auto t0 = std::chrono::steady_clock::now();
  BOOST_REQUIRE(idx->Add(ids, vecs).ok());
  std::vector<uint64_t> gone;
  for (size_t i = 0; i < kN; i += 3) gone.push_back(ids[i]);
  BOOST_REQUIRE(idx->Remove(gone).ok());
  std::vector<std::byte> bytes;
  BOOST_REQUIRE(idx->Serialize([&](std::span<const std::byte> b) {
    bytes.insert(bytes.end(), b.begin(), b.end());
    return Status::OK();
  }).ok());
  const IndexSpec spec{kDim, Metric::kL2, "Flat"};
  auto loader = NewIndexLoader(spec, std::span<const std::byte>(bytes).first(kLoaderHeadBytes), bytes.size());
  BOOST_REQUIRE(loader != nullptr);
  BOOST_REQUIRE(loader->Feed(bytes).ok());
  auto back = loader->Finish();
  BOOST_REQUIRE_MESSAGE(back.ok(), back.status().ToString());
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  BOOST_TEST((*back)->size() == kN - gone.size());
  for (size_t i = 0; i < kN; ++i) BOOST_REQUIRE((*back)->Contains(ids[i]) == (i % 3 != 0));
  // Spread, these take milliseconds; piled into one bucket, minutes.
  BOOST_TEST(s < 20.0, "adds, removes and a load of " << kN << " ids took " << s << " s");
}

// Search knobs reach FAISS per call: through an IVF index, a transform in
// front of one (under the id map, whose labels the backend then maps), an
// HNSW quantizer and an HNSW index. Probing every list is exact and one is
// not; a longer HNSW candidate list finds what FAISS's default misses; a
// knob left at 0 leaves FAISS's own setting, and one call's knob does not
// stay for the next. A knob the index has no part for is refused by name.
BOOST_AUTO_TEST_CASE(search_params_reach_faiss_per_call_and_a_knob_with_no_part_is_refused) {
  constexpr size_t kN = 4000, kQ = 50, kK = 10;
  const auto queries = RandomVectors(kQ, 77);
  auto recall = [&](const Filled& f, const SearchResults& r) {
    size_t hit = 0;
    for (size_t q = 0; q < kQ; ++q) {
      const auto truth = BruteForce(f.ids, f.vecs, queries.data() + q * kDim, kK, Metric::kL2);
      for (size_t j = 0; j < kK; ++j) hit += std::count(truth.begin(), truth.end(), r.ids[q * kK + j]);
    }
    return static_cast<double>(hit) / (kQ * kK);
  };
  auto search = [&](const Filled& f, SearchParams p) {
    auto r = f.idx->Search(queries, kK, nullptr, p);
    BOOST_REQUIRE_MESSAGE(r.ok(), r.status().ToString());
    return *r;
  };
  for (std::string desc : {"IVF32,Flat", "PCA16,IVF32,Flat", "IVF32_HNSW16,Flat"}) {
    BOOST_TEST_CONTEXT(desc) {
      const Filled f = MakeFilled(desc, kN, 5, 31);
      const auto every = search(f, {.nprobe = 32});
      const auto one = search(f, {.nprobe = 1});
      const auto plain = search(f, {});
      BOOST_TEST_MESSAGE(desc << ": recall@10 probing 32 lists " << recall(f, every) << ", 1 list " << recall(f, one));
      BOOST_TEST(recall(f, every) >= 0.99);
      BOOST_TEST(recall(f, one) < recall(f, every) - 0.1);
      BOOST_TEST(plain.ids == one.ids);  // FAISS's nprobe is 1, and the call before did not change it
      BOOST_TEST(search(f, {.nprobe = 1000}).ids == search(f, {.nprobe = 32}).ids);  // clamped to the lists
      // ef_search only where the quantizer is HNSW.
      auto ef = f.idx->Search(queries, kK, nullptr, {.nprobe = 4, .ef_search = 64});
      if (desc.find("HNSW") != std::string::npos)
        BOOST_TEST(ef.ok(), ef.status().ToString());
      else
        BOOST_TEST(ef.status().code() == Status::Code::kInvalidArgument);
    }
  }
  for (std::string desc : {"HNSW16", "PCA16,HNSW16"}) {
    BOOST_TEST_CONTEXT(desc) {
      Filled f = MakeFilled(desc, kN, 5, 31);
      // Tombstones too: the hits FAISS is asked for beyond k are filtered.
      BOOST_REQUIRE(f.idx->Remove(std::span(f.ids).first(100)).ok());
      f.ids.erase(f.ids.begin(), f.ids.begin() + 100);
      f.vecs.erase(f.vecs.begin(), f.vecs.begin() + 100 * kDim);
      const auto plain = search(f, {});
      const auto wide = search(f, {.ef_search = 512});
      BOOST_TEST_MESSAGE(desc << ": recall@10 at FAISS's efSearch " << recall(f, plain) << ", at 512 "
                              << recall(f, wide));
      BOOST_TEST(recall(f, wide) >= 0.99);
      BOOST_TEST(recall(f, wide) > recall(f, plain));
      BOOST_TEST(search(f, {}).ids == plain.ids);
    }
  }
  for (auto [desc, p, knob] : {std::tuple{"Flat", SearchParams{.nprobe = 8}, "nprobe"},
                               std::tuple{"HNSW16", SearchParams{.nprobe = 8}, "nprobe"},
                               std::tuple{"Flat", SearchParams{.ef_search = 8}, "ef_search"},
                               std::tuple{"IVF32,Flat,Refine(Flat)", SearchParams{.nprobe = 8}, "Refine"},
                               std::tuple{"IVF32,PQ8x4fs", SearchParams{.nprobe = 8}, "fast scan"}}) {
    BOOST_TEST_CONTEXT(desc << " " << knob) {
      auto idx = Make(desc);
      const Status checked = idx->CheckSearchParams(p);
      BOOST_TEST(checked.code() == Status::Code::kInvalidArgument);
      BOOST_TEST(checked.ToString().find(knob) != std::string::npos, checked.ToString());
      BOOST_TEST(checked.ToString().find(std::string("'") + desc + "'") != std::string::npos, checked.ToString());
      BOOST_TEST(idx->Search(queries, kK, nullptr, p).status().ToString() == checked.ToString());
      BOOST_TEST(idx->CheckSearchParams({}).ok());
    }
  }
}

// A checkpoint written while transforms in front of IVF were kept under
// IndexIDMap2 (where a second removal aborted the process) loads without the
// map, each IVF label turned into its slot, and then removes, searches and
// reconstructs by id. One whose labels a removal there had already parted
// from the map's rows is refused, not served with wrong ids.
BOOST_AUTO_TEST_CASE(an_ivf_behind_a_transform_stored_under_an_id_map_loads_relabelled) {
  const std::string desc = "PCA16,IVF8,Flat";
  auto [idx, ids, vecs] = MakeFilled(desc, 300, 5, 3);
  // Slots that are not the order of rows: the first 100 ids move to 300-399.
  const std::vector<uint64_t> moved(ids.begin(), ids.begin() + 100);
  BOOST_REQUIRE(idx->Remove(moved).ok());
  BOOST_REQUIRE(idx->Add(moved, std::span(vecs).first(100 * kDim)).ok());
  const std::vector<uint8_t> bytes = SerializedBytes(*idx);
  faiss::VectorIOReader r;
  r.data = bytes;
  std::unique_ptr<faiss::Index> now(faiss::read_index(&r));
  const std::vector<uint8_t> table(bytes.begin() + static_cast<std::ptrdiff_t>(r.rp), bytes.end());
  auto* trained = dynamic_cast<faiss::IndexPreTransform*>(now.get());
  BOOST_REQUIRE(trained != nullptr);  // no id map over it any more
  // The old layout of the same state: the map over the same trained index,
  // its rows in reverse order of slots. Slot s holds ids[s] for s >= 100 and
  // ids[s - 300] for s >= 300.
  auto old_layout = [&](bool parted) {
    std::unique_ptr<faiss::Index> inner(faiss::clone_index(trained));
    inner->reset();
    dynamic_cast<faiss::IndexIVF*>(dynamic_cast<faiss::IndexPreTransform*>(inner.get())->index)
        ->set_direct_map_type(faiss::DirectMap::NoMap);
    faiss::IndexIDMap2 map(inner.get());
    std::vector<faiss::Index::idx_t> slots;
    std::vector<float> rows;
    for (int64_t s = 399; s >= 100; --s) {
      const size_t i = s >= 300 ? static_cast<size_t>(s - 300) : static_cast<size_t>(s);
      slots.push_back(s);
      rows.insert(rows.end(), vecs.begin() + static_cast<std::ptrdiff_t>(i * kDim),
                  vecs.begin() + static_cast<std::ptrdiff_t>((i + 1) * kDim));
    }
    map.add_with_ids(static_cast<faiss::Index::idx_t>(slots.size()), rows.data(), slots.data());
    if (parted) {  // what a removal under the map did: rows closed up, labels not
      faiss::IDSelectorBatch first(1, slots.data());
      map.remove_ids(first);
    }
    faiss::VectorIOWriter w;
    faiss::write_index(&map, &w);
    w.data.insert(w.data.end(), table.begin(), table.end());
    return std::vector<std::byte>(reinterpret_cast<const std::byte*>(w.data.data()),
                                  reinterpret_cast<const std::byte*>(w.data.data() + w.data.size()));
  };
  auto back = LoadFaissIndex(idx->spec(), old_layout(false));
  BOOST_REQUIRE_MESSAGE(back.ok(), back.status().ToString());
  VectorIndex& b = **back;
  BOOST_TEST(b.size() == 300u);
  for (size_t i = 0; i < 300; i += 13) {
    BOOST_TEST_CONTEXT("id " << ids[i]) {
      auto hit = b.Search(std::span(vecs).subspan(i * kDim, kDim), 1, nullptr, {.nprobe = 8});
      BOOST_REQUIRE(hit.ok());
      BOOST_TEST(hit->ids[0] == ids[i]);
      auto v = b.Reconstruct(ids[i]);
      BOOST_REQUIRE(v.ok());
      for (uint32_t j = 0; j < kDim; ++j) BOOST_TEST(std::abs((*v)[j] - vecs[i * kDim + j]) < 1e-3);
    }
  }
  // Two removals in turn: the second is where the map aborted.
  BOOST_REQUIRE(b.Remove(std::span(ids).subspan(0, 50)).ok());
  BOOST_REQUIRE(b.Remove(std::span(ids).subspan(150, 50)).ok());
  BOOST_TEST(b.size() == 200u);
  for (size_t i : {0u, 60u, 160u, 250u}) {
    auto hit = b.Search(std::span(vecs).subspan(i * kDim, kDim), 1, nullptr, {.nprobe = 8});
    BOOST_REQUIRE(hit.ok());
    const bool removed = i < 50 || (i >= 150 && i < 200);
    BOOST_TEST((hit->ids[0] == ids[i]) == !removed, "id " << ids[i]);
    BOOST_TEST(b.Contains(ids[i]) == !removed);
  }
  auto parted = LoadFaissIndex(idx->spec(), old_layout(true));
  BOOST_TEST(parted.status().code() == Status::Code::kCorruption, parted.status().ToString());
  BOOST_TEST(parted.status().ToString().find("no longer match") != std::string::npos, parted.status().ToString());
}

// Index types FAISS builds but that cannot serve a store failed at their
// first add or search, an op already logged, and every reopen replayed it
// into the same failure. They are refused when the index is made.
BOOST_AUTO_TEST_CASE(index_types_that_cannot_serve_a_store_are_refused_when_made) {
  for (std::string desc : {"NSG16", "IDMap,Flat", "IDMap2,Flat", "Residual4x8,PQ8"}) {
    BOOST_TEST_CONTEXT(desc) {
      auto idx = NewFaissIndex({kDim, Metric::kL2, desc});
      BOOST_TEST(idx.status().code() == Status::Code::kInvalidArgument);
      BOOST_TEST(idx.status().ToString().find("'" + desc + "'") != std::string::npos, idx.status().ToString());
    }
  }
}

// An IVF's HNSW quantizer takes ef_search as FAISS takes its own efSearch
// (FAISS 1.7.3 would not take it per search): the results equal those of a
// copy of the index whose quantizer has that efSearch set, and differ from
// the default's, which keeps fewer candidates on the quantizer's graph.
BOOST_AUTO_TEST_CASE(an_ivf_hnsw_quantizer_takes_ef_search_as_faiss_takes_its_own) {
  constexpr size_t kK = 10, kQ = 50;
  const auto queries = RandomVectors(kQ, 78);
  for (std::string desc : {"IVF256_HNSW8,Flat", "PCA16,IVF256_HNSW8,Flat"}) {
    BOOST_TEST_CONTEXT(desc) {
      const Filled f = MakeFilled(desc, 4000, 0, 32);
      const std::vector<uint8_t> bytes = SerializedBytes(*f.idx);
      faiss::VectorIOReader r;
      r.data = bytes;
      std::unique_ptr<faiss::Index> copy(faiss::read_index(&r));
      faiss::Index* inner = copy.get();
      if (auto* pre = dynamic_cast<faiss::IndexPreTransform*>(inner)) inner = pre->index;
      auto* ivf = dynamic_cast<faiss::IndexIVF*>(inner);
      BOOST_REQUIRE(ivf != nullptr);
      ivf->nprobe = 8;
      dynamic_cast<faiss::IndexHNSW&>(*ivf->quantizer).hnsw.efSearch = 128;
      std::vector<float> dist(kQ * kK);
      std::vector<faiss::Index::idx_t> labels(kQ * kK);
      copy->search(static_cast<faiss::Index::idx_t>(kQ), queries.data(), static_cast<faiss::Index::idx_t>(kK),
                   dist.data(), labels.data());
      std::vector<uint64_t> theirs;
      for (auto l : labels) theirs.push_back(l < 0 ? kNoId : f.ids[static_cast<size_t>(l)]);  // slot i: ids[i]
      auto ours = f.idx->Search(queries, kK, nullptr, {.nprobe = 8, .ef_search = 128});
      auto plain = f.idx->Search(queries, kK, nullptr, {.nprobe = 8});
      BOOST_REQUIRE_MESSAGE(ours.ok(), ours.status().ToString());
      BOOST_REQUIRE(plain.ok());
      BOOST_TEST(ours->ids == theirs, boost::test_tools::per_element());
      BOOST_TEST(plain->ids != theirs);
    }
  }
}

// A filter reaches FAISS as a selector, so a search of a few ids gets k of
// them where there are k, from every index type that takes parameters: the
// exhaustive ones (Flat, SQ, IVF probing every list, a transform in front)
// return exactly the k best of those ids. Ids removed (HNSW: tombstones) stay
// out. Indexes that take no parameters refuse a filter by name.
BOOST_AUTO_TEST_CASE(a_filter_reaches_every_index_type_and_keeps_k_hits_of_a_few_ids) {
  constexpr size_t kN = 1500, kK = 10;
  const auto queries = RandomVectors(6, 5);
  // One id in 30 (50 of them): FAISS's first hits, filtered only afterwards,
  // would hold about one.
  auto passes = [](uint64_t id) { return (id / 7) % 30 == 4; };
  for (std::string desc : {"Flat", "SQ8", "IVF8,Flat", "PCA8,IVF8,Flat", "HNSW16", "IVF8_HNSW16,Flat", "IVF8,PQ4"}) {
    BOOST_TEST_CONTEXT(desc) {
      Filled f = MakeFilled(desc, kN, 3, 41);
      // Some of the passing ids go: they must not come back.
      std::vector<uint64_t> removed;
      for (size_t i = 0; i < kN; i += 90) removed.push_back(f.ids[i + 4]);
      for (uint64_t id : removed) BOOST_REQUIRE(passes(id));
      BOOST_REQUIRE(f.idx->Remove(removed).ok());
      SearchParams p{.nprobe = desc.find("IVF") != std::string::npos ? size_t{8} : 0,
                     .ef_search = desc.find("HNSW") != std::string::npos ? size_t{256} : 0,
                     .filter = passes};
      // The same ids as a list: the removed ones among them, some twice, and
      // ids the index never held.
      std::vector<uint64_t> listed;
      for (uint64_t id : f.ids)
        if (passes(id)) listed.insert(listed.end(), 1 + (id % 3 == 0), id);
      listed.push_back(1);
      listed.push_back(~0ull - 1);
      SearchParams as_list = p;
      as_list.filter = nullptr;
      as_list.ids = listed;
      auto r = f.idx->Search(queries, kK, nullptr, p);
      BOOST_REQUIRE_MESSAGE(r.ok(), r.status().ToString());
      auto from_list = f.idx->Search(queries, kK, nullptr, as_list);
      BOOST_REQUIRE_MESSAGE(from_list.ok(), from_list.status().ToString());
      BOOST_TEST(from_list->ids == r->ids, boost::test_tools::per_element());
      const std::set<uint64_t> gone(removed.begin(), removed.end());
      for (uint64_t id : r->ids) {
        BOOST_TEST(id != kNoId, "a row came up short");
        BOOST_TEST(passes(id), id);
        BOOST_TEST(!gone.count(id), id);
      }
      if (desc.find("HNSW") != std::string::npos || desc.find("PQ") != std::string::npos) continue;
      // The exact answer: the same search of an index that holds only those ids.
      Filled only{Make(desc), {}, {}};
      for (size_t i = 0; i < kN; ++i)
        if (passes(f.ids[i]) && !gone.count(f.ids[i])) {
          only.ids.push_back(f.ids[i]);
          only.vecs.insert(only.vecs.end(), f.vecs.begin() + i * kDim, f.vecs.begin() + (i + 1) * kDim);
        }
      BOOST_REQUIRE(only.idx->Add(only.ids, only.vecs).ok());
      SearchParams exhaustive = p;
      exhaustive.filter = nullptr;
      auto want = only.idx->Search(queries, kK, nullptr, exhaustive);
      BOOST_REQUIRE(want.ok());
      BOOST_TEST(r->ids == want->ids, boost::test_tools::per_element());
    }
  }
  // Nothing passes: rows of kNoId, not an error (FAISS 1.7.3 answers k = 1
  // by L2 with row 0, at an infinite distance, all the same).
  // An empty list passes nothing too, not everything.
  for (size_t k : {size_t{1}, kK}) {
    Filled f = MakeFilled("Flat", 100, 3, 41);
    for (const SearchParams& nothing :
         {SearchParams{.filter = [](uint64_t) { return false; }}, SearchParams{.ids = std::span<const uint64_t>()}}) {
      auto none = f.idx->Search(queries, k, nullptr, nothing);
      BOOST_REQUIRE(none.ok());
      BOOST_TEST(std::all_of(none->ids.begin(), none->ids.end(), [](uint64_t id) { return id == kNoId; }));
    }
  }
  for (std::string desc : {"IVF32,Flat,Refine(Flat)", "IVF32,PQ8x4fs"}) {
    BOOST_TEST_CONTEXT(desc) {
      auto idx = Make(desc);
      const Status checked = idx->CheckSearchParams({.filter = passes});
      BOOST_TEST(checked.code() == Status::Code::kInvalidArgument);
      BOOST_TEST(checked.ToString().find("filter") != std::string::npos, checked.ToString());
      const std::vector<uint64_t> one{1};
      BOOST_TEST(idx->CheckSearchParams({.ids = one}).ToString() == checked.ToString());
    }
  }
}

BOOST_AUTO_TEST_CASE(a_scan_lists_every_live_vector_once_in_pieces) {
  for (std::string desc : {"Flat", "HNSW16", "IVF8,Flat", "SQ8"}) {
    BOOST_TEST_CONTEXT(desc) {
      auto f = MakeFilled(desc, 500, 11, 5);
      // Removed ids are not listed (HNSW keeps them as tombstones), and an
      // updated id lists its new vector.
      std::vector<uint64_t> gone(f.ids.begin(), f.ids.begin() + 50);
      BOOST_REQUIRE(f.idx->Remove(gone).ok());
      std::vector<uint64_t> moved{f.ids[60]};
      BOOST_REQUIRE(f.idx->Remove(moved).ok());
      std::vector<float> far(kDim, 3.f);
      BOOST_REQUIRE(f.idx->Add(moved, far).ok());
      std::map<uint64_t, std::vector<float>> seen;
      size_t pieces = 0;
      BOOST_REQUIRE(f.idx->ScanLive(64, [&](std::span<const uint64_t> ids, std::span<const float> v) {
                           BOOST_REQUIRE(ids.size() <= 64u);
                           BOOST_REQUIRE(v.size() == ids.size() * kDim);
                           for (size_t i = 0; i < ids.size(); ++i)
                             BOOST_REQUIRE(seen.emplace(ids[i], std::vector<float>(v.begin() + i * kDim, v.begin() + (i + 1) * kDim)).second);
                           ++pieces;
                           return Status::OK();
                         }).ok());
      BOOST_TEST(seen.size() == 450u);
      BOOST_TEST(pieces >= 450u / 64);
      for (uint64_t id : gone) BOOST_TEST(seen.count(id) == 0u);
      for (const auto& [id, v] : seen) {
        auto want = f.idx->Reconstruct(id);
        BOOST_REQUIRE(want.ok());
        BOOST_TEST((v == *want), "id " << id);
      }
      if (desc == "Flat") BOOST_TEST((seen[f.ids[60]] == far));
      // A visitor's error ends the scan and is returned.
      int calls = 0;
      auto s = f.idx->ScanLive(64, [&](std::span<const uint64_t>, std::span<const float>) {
        ++calls;
        return Status::IOError("stop");
      });
      BOOST_TEST(s.ToString().find("stop") != std::string::npos);
      BOOST_TEST(calls == 1);
    }
  }
}
