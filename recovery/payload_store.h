// PayloadStore: the opaque payload of each id, which a checkpoint can write
// out whole while writes go on.
//
// A checkpoint used to copy every payload (a std::map) while writers were
// stopped: a stall that grew with the number of payloads, not with what
// changed. Freeze() instead hands out the map as it is, and leaves it
// untouched until Thaw(): writes meanwhile go into an overlay (the new
// payload, or "none"), which lookups consult first and Thaw() folds in. The
// stall at a checkpoint's end is then the writes made during it.
//
// Thread safety: the owner serializes calls as it would for a map (writes
// exclusive, Find/size shared). The map Freeze() returns may be read from any
// thread, without the owner's lock, until Thaw().
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <vector>

#include "recovery/checkpoint_file.h"

namespace vecwal::recovery {

class PayloadStore {
 public:
  // An empty payload is none: the id's payload goes.
  void Set(uint64_t id, std::span<const std::byte> payload);
  void Erase(uint64_t id);
  // Null where the id has no payload.
  const std::vector<std::byte>* Find(uint64_t id) const;
  uint64_t size() const { return live_; }

  // Replaces every payload (a loaded checkpoint's); not while frozen.
  void Reset(Payloads p);
  // The payloads as they are now, unchanged until Thaw(). One at a time.
  const Payloads& Freeze();
  void Thaw();

 private:
  Payloads base_;
  std::map<uint64_t, std::optional<std::vector<std::byte>>> overlay_;  // only while frozen
  uint64_t live_ = 0;
  bool frozen_ = false;
};

}  // namespace vecwal::recovery
