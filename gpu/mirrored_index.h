// A Flat index whose searches run on a GPU.
//
// MirrorOnDevice keeps the FAISS CPU index it is given as the one that
// checkpoints serialize (the checkpoint format, and stock FAISS's
// read_index of it, do not change) and copies its vectors into a
// DeviceFlatStore, which every search then uses: exact, as the CPU Flat is,
// with the same distances to float rounding. Adds and removes change both.
// A store opened with it (DurableIndexOptions::wrap_index) loads its
// checkpoint and replays its log into host memory and the card together, and
// serves from the card from its first search.
//
// If the card fails after the host index changed (an add the card had no
// memory for, a copy that failed), the mirror is dropped: searches go on,
// exact, on the CPU index, and device_status() says why. Nothing acknowledged
// depends on the card, which holds only a copy.
#pragma once

#include <memory>

#include "gpu/row_store.h"
#include "index/vector_index.h"

namespace vecwal::gpu {

// Wraps `host` (a Flat index, L2 or inner product) with a copy of its
// vectors on CUDA device `device`. InvalidArgument for any other index
// description, or a device that does not exist.
Result<std::unique_ptr<index::VectorIndex>> MirrorOnDevice(std::unique_ptr<index::VectorIndex> host, int device);

// What OnDevice does where the card cannot take the index (no such device,
// no driver, too little memory): refuse it, so that the store does not
// open; or keep the store's searches on the CPU (exact, slower), saying why
// in DeviceStatus and the store's Stats().searched_on, so that a server
// whose card failed still comes back up and serves.
enum class IfNoCard { kFail, kSearchOnCpu };

// The same over any RowStore (empty, of the index's dimension), which
// `where` names in SearchedOn: tests give it one in host memory.
Result<std::unique_ptr<index::VectorIndex>> MirrorOn(std::unique_ptr<index::VectorIndex> host,
                                                     std::unique_ptr<RowStore> rows, std::string where);

// For DurableIndexOptions::wrap_index: every index the store makes or loads
// goes onto `device`. An index that is not Flat is refused either way.
std::function<Result<std::unique_ptr<index::VectorIndex>>(std::unique_ptr<index::VectorIndex>)> OnDevice(
    int device, IfNoCard if_none = IfNoCard::kFail);

// OK while `index` (one MirrorOnDevice made) searches on its card; the error
// that dropped the mirror otherwise. InvalidArgument for any other index.
Status DeviceStatus(const index::VectorIndex& index);

// The fault seam: the next change the card should follow (an add or a
// remove) fails there with `why`, as a card out of memory would.
void FailNextDeviceChange(index::VectorIndex& index, Status why);

}  // namespace vecwal::gpu
