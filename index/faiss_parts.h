// Pieces the FAISS backend's files share (faiss_index.cc, flat_export.cc,
// flat_loader.cc). Only index/ includes this.
#pragma once

#include <faiss/Index.h>
#include <faiss/IndexIDMap.h>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <span>
#include <string>

#include "index/id_table.h"
#include "index/vector_index.h"

namespace vecwal::index {

// The id and slot tables are open-addressed: see index/id_table.h.
using IdTable = IdMap<uint64_t>;
using SlotSet = IdSet;

// Runs FAISS code: what it throws comes back as a Status (InvalidArgument,
// prefixed with `what`), so that no exception crosses into the durable layer.
template <typename F>
Status Guard(const std::string& what, F&& f) {
  try {
    f();
    return Status::OK();
  } catch (const std::exception& e) {
    return Status::InvalidArgument(what + ": " + e.what());
  }
}

inline faiss::MetricType ToFaiss(Metric m) { return m == Metric::kL2 ? faiss::METRIC_L2 : faiss::METRIC_INNER_PRODUCT; }

// Replay adds a window (ReplayWindow: 16 MiB) at a time: fault in four
// windows ahead, and no more (its reserve is an upper bound, and pages
// faulted past the last add are RSS for good). One window ahead was enough
// while replay copied each vector twice; with one copy the adds caught up
// with the faults and took them on themselves (an add's own page faults
// cost more than a populate's, and the log's reader waited for them).
inline constexpr size_t kReplayPrefaultLead = 64 << 20;
// A checkpoint load fills every page of its codes, so it faults them all
// in from the start (the lead is the whole storage). On a VM whose balloon
// reports free memory to the host, pages a process just freed are cheap to
// fault only for a second or two (dev driver, a 3 GB load: median 3.46 s
// against 3.94 s with a 64 MiB lead, 11 loads each).
inline constexpr unsigned kPrefaultThreads = 2;
inline constexpr size_t kPrefaultMin = 64 << 20;  // below this the faults are not worth a thread

inline constexpr uint64_t kTableMagic = 0x3142415453574556ull;  // "VEWSTAB1": the slot table after the FAISS bytes

// The slot table that follows the FAISS bytes (FaissIndex::WriteTable),
// parsed and checked: every slot below the next slot, no id or slot twice.
struct SlotTables {
  uint64_t next_slot = 0;
  IdTable slot_of;  // live id -> slot
  IdTable id_of;    // live slot -> id
  SlotSet dead;     // tombstoned slots
};
Result<SlotTables> ParseSlotTable(std::span<const std::byte> b);

// A flat index a checkpoint load rebuilt (FAISS's id map over the codes) and
// its slot table, as the backend's index.
Result<std::unique_ptr<VectorIndex>> AdoptLoadedFlat(const IndexSpec& spec, std::unique_ptr<faiss::IndexIDMap2> map,
                                                     SlotTables slots);

}  // namespace vecwal::index
