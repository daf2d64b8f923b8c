// ReplayWindow: windows are applied on a thread of their own while the next
// one fills; the index must still see the log's order, whole windows at a
// time, and an apply's error must reach the caller.
#define BOOST_TEST_MODULE replay_test
#include <boost/test/unit_test.hpp>

#include <atomic>
#include <cstring>
#include <limits>
#include <memory>
#include <map>
#include <random>
#include <thread>

#include "recovery/replay_window.h"
#include "index/forwarding_index.h"

namespace vecwal::recovery {
namespace {

constexpr uint32_t kDim = 4;

// Forwards to a FAISS index; counts overlapping calls, fails the n-th Add.
class WatchedIndex final : public index::ForwardingIndex {
 public:
  using ForwardingIndex::ForwardingIndex;
  int fail_add = -1;  // the Add (0-based) that fails
  std::atomic<int> overlaps{0}, adds{0};
  std::thread::id caller;
  std::atomic<int> on_caller_thread{0};

  Status Add(std::span<const uint64_t> ids, std::span<const float> v) override {
    Enter();
    const int n = adds++;
    Status s = n == fail_add ? Status::IOError("injected add failure") : inner_->Add(ids, v);
    Leave();
    return s;
  }
  // Replay adds through AddRows; VectorIndex's own packs the rows for Add.
  Status AddRows(std::span<const uint64_t> ids, std::span<const std::byte* const> rows) override {
    return VectorIndex::AddRows(ids, rows);
  }
  Status Remove(std::span<const uint64_t> ids) override {
    Enter();
    Status s = inner_->Remove(ids);
    Leave();
    return s;
  }

 private:
  void Enter() {
    if (busy_.exchange(true)) ++overlaps;
    if (std::this_thread::get_id() == caller) ++on_caller_thread;
    std::this_thread::sleep_for(std::chrono::microseconds(200));  // widen any overlap
  }
  void Leave() { busy_ = false; }
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
  // It names the records whose ops the index refused: the third window of two.
  BOOST_TEST(first_error.ToString().find("records LSN 5 to 6") != std::string::npos, first_error.ToString());
  BOOST_TEST(idx->adds.load() == 3);  // no window was applied after the failed one
}

// A record's vector in a buffer of its own, as the log's reader hands them
// out (LogRecord::keep); the buffer is overwritten with NaNs as it goes, so
// a row read after its buffer was let go is seen.
struct KeptRecord {
  std::shared_ptr<const void> keep;
  wal::OpView view;
};
std::atomic<int> live_buffers{0}, most_live_buffers{0};
KeptRecord MakeKept(uint64_t id, float tag) {
  auto* v = new std::vector<float>{float(id), tag, 2, 3};
  most_live_buffers = std::max(most_live_buffers.load(), ++live_buffers);
  std::shared_ptr<const void> keep(v, [](std::vector<float>* p) {
    std::fill(p->begin(), p->end(), std::numeric_limits<float>::quiet_NaN());
    --live_buffers;
    delete p;
  });
  return {keep, {false, id, kDim, std::as_bytes(std::span(*v)), {}}};
}

BOOST_AUTO_TEST_CASE(a_window_holds_the_log_buffers_its_rows_point_into_until_it_is_applied) {
  auto idx = NewWatched();
  PayloadStore payloads;
  std::vector<std::weak_ptr<const void>> watch;
  {
    ReplayWindow w(*idx, payloads, /*rows_per_flush=*/4);
    for (uint64_t rec = 0; rec < 60; ++rec) {
      KeptRecord r = MakeKept(rec % 25, float(rec));  // ids come back: later rows replace earlier ones
      watch.push_back(r.keep);
      BOOST_REQUIRE(w.Apply(std::span(&r.view, 1), rec + 1, r.keep).ok());
      // r goes: the window's hold is the only one left
    }
    BOOST_REQUIRE(w.Flush().ok());
    for (const auto& b : watch) BOOST_TEST(b.expired());  // every applied window let go of its buffers
  }
  BOOST_TEST(idx->size() == 25u);
  for (uint64_t id = 0; id < 25; ++id) {
    auto v = idx->Reconstruct(id);
    BOOST_REQUIRE(v.ok());
    const float last = float(id + 50 < 60 ? id + 50 : id + 25);  // the id's last record
    BOOST_TEST(*v == (std::vector<float>{float(id), last, 2, 3}), boost::test_tools::per_element());
  }
}

// A log that rewrites one id fills one row per window: the window is handed
// on by the buffers it holds, or it would keep the whole log in memory.
BOOST_AUTO_TEST_CASE(a_log_that_rewrites_one_id_does_not_keep_all_its_buffers) {
  auto idx = NewWatched();
  PayloadStore payloads;
  most_live_buffers = live_buffers.load();
  const int before = live_buffers.load();
  {
    ReplayWindow w(*idx, payloads);
    for (uint64_t rec = 0; rec < 200; ++rec) {
      KeptRecord r = MakeKept(7, float(rec));
      BOOST_REQUIRE(w.Apply(std::span(&r.view, 1), rec + 1, r.keep).ok());
    }
    BOOST_REQUIRE(w.Flush().ok());
  }
  BOOST_TEST(most_live_buffers.load() - before <= int(2 * ReplayWindow::kMaxKept + 1));
  BOOST_TEST(live_buffers.load() == before);
  auto v = idx->Reconstruct(7);
  BOOST_REQUIRE(v.ok());
  BOOST_TEST(*v == (std::vector<float>{7, 199, 2, 3}), boost::test_tools::per_element());
}

}  // namespace
}  // namespace vecwal::recovery
