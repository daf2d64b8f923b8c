// ReplayWindow: windows are applied on a thread of their own while the next
// one fills; the index must still see the log's order, whole windows at a
// time, and an apply's error must reach the caller.
#define BOOST_TEST_MODULE replay_test
#include <boost/test/unit_test.hpp>

#include <atomic>
#include <cstring>
#include <map>
#include <random>
#include <thread>

#include "recovery/replay_window.h"

namespace vecwal::recovery {
namespace {

constexpr uint32_t kDim = 4;

// Forwards to a FAISS index; counts overlapping calls, fails the n-th Add.
class WatchedIndex final : public index::VectorIndex {
 public:
  explicit WatchedIndex(std::unique_ptr<index::VectorIndex> inner) : inner_(std::move(inner)) {}
  int fail_add = -1;  // the Add (0-based) that fails
  std::atomic<int> overlaps{0}, adds{0};
  std::thread::id caller;
  std::atomic<int> on_caller_thread{0};

  const index::IndexSpec& spec() const override { return inner_->spec(); }
  bool is_trained() const override { return inner_->is_trained(); }
  Status Train(std::span<const float> s) override { return inner_->Train(s); }
  Status Add(std::span<const uint64_t> ids, std::span<const float> v) override {
    Enter();
    const int n = adds++;
    Status s = n == fail_add ? Status::IOError("injected add failure") : inner_->Add(ids, v);
    Leave();
    return s;
  }
  Status Remove(std::span<const uint64_t> ids) override {
    Enter();
    Status s = inner_->Remove(ids);
    Leave();
    return s;
  }
  Result<index::SearchResults> Search(std::span<const float> q, size_t k) const override { return inner_->Search(q, k); }
  bool Contains(uint64_t id) const override { return inner_->Contains(id); }
  Result<std::vector<float>> Reconstruct(uint64_t id) const override { return inner_->Reconstruct(id); }
  size_t size() const override { return inner_->size(); }
  size_t tombstones() const override { return inner_->tombstones(); }
  void Reserve(size_t n) override { inner_->Reserve(n); }
  Status Compact() override { return inner_->Compact(); }
  Status Serialize(const index::ByteSink& sink) const override { return inner_->Serialize(sink); }
  Result<std::unique_ptr<index::IndexExport>> BeginExport() override { return inner_->BeginExport(); }

 private:
  void Enter() {
    if (busy_.exchange(true)) ++overlaps;
    if (std::this_thread::get_id() == caller) ++on_caller_thread;
    std::this_thread::sleep_for(std::chrono::microseconds(200));  // widen any overlap
  }
  void Leave() { busy_ = false; }
  std::unique_ptr<index::VectorIndex> inner_;
  std::atomic<bool> busy_{false};
};

std::unique_ptr<WatchedIndex> NewWatched() {
  auto inner = index::NewFaissIndex({kDim, index::Metric::kL2, "Flat"});
  BOOST_REQUIRE(inner.ok());
  auto w = std::make_unique<WatchedIndex>(std::move(inner).value());
  w->caller = std::this_thread::get_id();
  return w;
}

// One op as replay sees it: views into bytes the test keeps alive.
struct HeldOp {
  bool is_delete = false;
  uint64_t id = 0;
  std::vector<float> v;
  std::vector<std::byte> payload;
  wal::OpView View() const {
    return {is_delete, id, kDim, std::as_bytes(std::span(v)), std::span(payload)};
  }
};

HeldOp RandomOp(std::mt19937_64& rng, uint64_t serial) {
  HeldOp op;
  op.id = rng() % 40;
  op.is_delete = rng() % 4 == 0;
  if (!op.is_delete) {
    op.v = {float(serial), float(op.id), 0.5f, -1.0f};
    if (rng() % 2) op.payload.assign(1 + rng() % 8, std::byte(serial & 0xff));
  }
  return op;
}

BOOST_AUTO_TEST_CASE(windows_apply_in_log_order_one_at_a_time_off_the_callers_thread) {
  auto idx = NewWatched();
  PayloadStore payloads;
  std::map<uint64_t, HeldOp> model;  // id -> last upsert
  std::mt19937_64 rng(7);
  {
    ReplayWindow w(*idx, payloads, /*rows_per_flush=*/3);
    uint64_t serial = 0;
    for (int rec = 0; rec < 600; ++rec) {
      // Records of one op, and batches of up to 5 that cross window limits.
      std::vector<HeldOp> held;
      const int n = rec % 7 == 0 ? 1 + int(rng() % 5) : 1;
      for (int i = 0; i < n; ++i) held.push_back(RandomOp(rng, ++serial));
      std::vector<wal::OpView> views;
      for (const auto& h : held) {
        views.push_back(h.View());
        if (h.is_delete) model.erase(h.id);
        else model[h.id] = h;
      }
      BOOST_REQUIRE(w.Apply(views, rec + 1).ok());
    }
    BOOST_REQUIRE(w.Flush().ok());
  }
  BOOST_TEST(idx->overlaps.load() == 0);
  BOOST_TEST(idx->on_caller_thread.load() == 0);
  BOOST_TEST(idx->adds.load() > 100);
  BOOST_TEST(idx->size() == model.size());
  for (uint64_t id = 0; id < 40; ++id) {
    auto it = model.find(id);
    BOOST_TEST_CONTEXT("id " << id) {
      BOOST_REQUIRE(idx->Contains(id) == (it != model.end()));
      if (it == model.end()) {
        BOOST_TEST(payloads.Find(id) == nullptr);
        continue;
      }
      auto v = idx->Reconstruct(id);
      BOOST_REQUIRE(v.ok());
      BOOST_TEST(*v == it->second.v, boost::test_tools::per_element());
      if (it->second.payload.empty()) BOOST_TEST(payloads.Find(id) == nullptr);
      else BOOST_TEST((payloads.Find(id) && *payloads.Find(id) == it->second.payload));
    }
  }
}

BOOST_AUTO_TEST_CASE(an_apply_error_reaches_a_later_call_and_stops_the_windows_after_it) {
  auto idx = NewWatched();
  idx->fail_add = 2;
  PayloadStore payloads;
  ReplayWindow w(*idx, payloads, /*rows_per_flush=*/2);
  Status first_error;
  for (uint64_t id = 0; id < 40 && first_error.ok(); ++id) {
    HeldOp op;
    op.id = id;
    op.v = {1, 2, 3, float(id)};
    wal::OpView v = op.View();
    first_error = w.Apply(std::span(&v, 1), id + 1);
  }
  if (first_error.ok()) first_error = w.Flush();
  BOOST_TEST(!first_error.ok());
  BOOST_TEST(first_error.ToString().find("injected add failure") != std::string::npos);
  BOOST_TEST(idx->adds.load() == 3);  // no window was applied after the failed one
}

}  // namespace
}  // namespace vecwal::recovery
