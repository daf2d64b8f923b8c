#include "tools/crash_workload.h"

#include <cstring>

#include <fmt/core.h>

namespace vecwal::tools {
namespace {

uint64_t Mix(uint64_t x) {  // splitmix64's finalizer
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

std::vector<std::byte> PayloadFor(uint64_t s) {
  std::vector<std::byte> p(sizeof s);
  std::memcpy(p.data(), &s, sizeof s);
  return p;
}

// The first way `store` differs from `m`, or "" when it does not.
std::string Differs(const recovery::DurableIndex& store, const CrashModel& m, bool exact_vectors) {
  if (store.Size() != m.live())
    return fmt::format("the store holds {} vectors, the ops hold {}", store.Size(), m.live());
  std::vector<float> want(m.dim());
  for (uint64_t id = 0; id < m.vectors(); ++id) {
    const uint64_t s = m.last()[id];
    if (s == CrashModel::kAbsent) {
      if (store.Contains(id)) return fmt::format("id {} is present but was removed", id);
      continue;
    }
    auto e = store.Get(id);
    if (!e.ok()) return fmt::format("id {} (written by op {}) is missing: {}", id, s, e.status().ToString());
    uint64_t got = 0;
    if (e->payload.size() != sizeof got) return fmt::format("id {}: payload of {} bytes", id, e->payload.size());
    std::memcpy(&got, e->payload.data(), sizeof got);
    if (got != s) return fmt::format("id {}: holds op {}, expected op {}", id, got, s);
    if (!exact_vectors) continue;
    m.VectorFor(s, want);
    if (e->vector != want) return fmt::format("id {}: vector differs from op {}'s", id, s);
  }
  return "";
}

}  // namespace

CrashModel::Op CrashModel::Next() {
  const uint64_t s = next_++;
  const uint64_t n = last_.size();
  Op op{s, s < n ? s : Mix(s) % n, false};
  if (s >= n && s % 8 == 7 && last_[op.id] != kAbsent) {
    op.remove = true;
    last_[op.id] = kAbsent;
    --live_;
    return op;
  }
  if (last_[op.id] == kAbsent) ++live_;
  last_[op.id] = s;
  return op;
}

void CrashModel::VectorFor(uint64_t s, std::span<float> out) const {
  uint64_t x = Mix(s);
  for (auto& v : out) {
    x = Mix(x);
    v = static_cast<float>(x >> 40) / static_cast<float>(1 << 24) * 2.f - 1.f;  // exact in float
  }
}

void NextBatch(CrashModel& m, uint64_t n, recovery::WriteBatch& b) {
  std::vector<float> v(m.dim());
  for (uint64_t i = 0; i < n; ++i) {
    auto op = m.Next();
    if (op.remove) {
      b.Remove(op.id);
      continue;
    }
    m.VectorFor(op.s, v);
    b.Upsert(op.id, v, PayloadFor(op.s));
  }
}

VerifyResult VerifyPrefix(const recovery::DurableIndex& store, uint64_t vectors, size_t dim, uint64_t batch,
                          uint64_t acked_ops, uint64_t max_unacked_batches, bool exact_vectors) {
  VerifyResult r;
  r.acked_ops = acked_ops;
  CrashModel m(vectors, dim);
  while (m.ops() < acked_ops) m.Next();
  std::string first;
  for (uint64_t extra = 0; extra <= max_unacked_batches; ++extra) {
    std::string d = Differs(store, m, exact_vectors);
    if (d.empty()) {
      r.ok = true;
      r.recovered_ops = m.ops();
      return r;
    }
    if (first.empty()) first = d;
    for (uint64_t i = 0; i < batch; ++i) m.Next();
  }
  r.problem = fmt::format("acknowledged ops lost: the store matches no prefix of {} or more ops; against the "
                          "acknowledged {}: {}",
                          acked_ops, acked_ops, first);
  return r;
}

}  // namespace vecwal::tools
