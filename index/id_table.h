// IdTable: the open-addressed hash table (tsl::robin_map) for u64 ids, with
// the key mixing it needs.
//
// Tables keyed by id hold an entry per vector: as node-based
// std::unordered_maps, the two a 1M-vector checkpoint load fills took
// 0.8-1.0 s (a node allocated and faulted in per entry). robin_map's buckets
// are a power of two, so keys are mixed first (murmur3's finalizer): user
// ids such as k << 32 would otherwise all land in one bucket.
#pragma once

#include <cstddef>
#include <cstdint>

#include <tsl/robin_map.h>
#include <tsl/robin_set.h>

namespace vecwal::index {

struct IdHash {
  size_t operator()(uint64_t x) const {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return static_cast<size_t>(x);
  }
};

template <typename V>
using IdMap = tsl::robin_map<uint64_t, V, IdHash>;
using IdSet = tsl::robin_set<uint64_t, IdHash>;

}  // namespace vecwal::index
