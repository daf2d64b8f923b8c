#include "recovery/payload_store.h"

#include <cassert>

namespace vecwal::recovery {

// Unfrozen, one lookup in base_ each (replay calls these once per op).
void PayloadStore::Set(uint64_t id, std::span<const std::byte> payload) {
  if (payload.empty()) return Erase(id);
  if (!frozen_) {
    auto [it, added] = base_.try_emplace(id);
    live_ += added;
    it->second.assign(payload.begin(), payload.end());
    return;
  }
  if (Find(id) == nullptr) ++live_;
  overlay_[id].emplace(payload.begin(), payload.end());
}

void PayloadStore::Erase(uint64_t id) {
  if (!frozen_) {
    live_ -= base_.erase(id);
    return;
  }
  if (Find(id) == nullptr) return;
  --live_;
  overlay_[id].reset();
}

const std::vector<std::byte>* PayloadStore::Find(uint64_t id) const {
  if (frozen_) {
    if (auto it = overlay_.find(id); it != overlay_.end()) return it->second ? &*it->second : nullptr;
  }
  auto it = base_.find(id);
  return it == base_.end() ? nullptr : &it->second;
}

void PayloadStore::Reset(Payloads p) {
  assert(!frozen_);
  base_ = std::move(p);
  live_ = base_.size();
}

const Payloads& PayloadStore::Freeze() {
  assert(!frozen_);
  frozen_ = true;
  return base_;
}

void PayloadStore::Thaw() {
  if (!frozen_) return;
  for (auto& [id, p] : overlay_) {
    if (p) base_.insert_or_assign(id, std::move(*p));
    else base_.erase(id);
  }
  overlay_.clear();
  frozen_ = false;
  assert(live_ == base_.size());
}

}  // namespace vecwal::recovery
