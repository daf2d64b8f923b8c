// The payloads of the log's record types: vector upsert, delete, atomic
// batch, checkpoint marker. Encoding is little-endian and documented in
// docs/FORMAT.md; decoding checks every length against the record and names
// the LSN in its error.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "io/status.h"
#include "wal/format.h"

namespace vecwal::wal {

struct UpsertOp {
  uint64_t id = 0;
  std::vector<float> vector;
  std::vector<std::byte> payload;
};
struct DeleteOp {
  uint64_t id = 0;
};
// Several ops that recovery applies all or none.
struct BatchOp {
  std::vector<std::variant<UpsertOp, DeleteOp>> ops;
};
// Written after a checkpoint at `checkpoint_lsn` is durable.
struct CheckpointMarkerOp {
  uint64_t checkpoint_lsn = 0;
  std::string file_name;
};

using Op = std::variant<UpsertOp, DeleteOp, BatchOp, CheckpointMarkerOp>;

RecordType TypeOf(const Op& op);
// Appends the payload of `op` to `out`.
void EncodeOp(const Op& op, std::vector<std::byte>& out);
// Encodes an upsert straight from caller memory, without building an UpsertOp.
void EncodeUpsert(uint64_t id, std::span<const float> vec, std::span<const std::byte> payload,
                  std::vector<std::byte>& out);
// Decodes a record's payload; `lsn` only names the record in errors.
Result<Op> DecodeOp(RecordType type, std::span<const std::byte> payload, uint64_t lsn);

// An upsert or delete as a view into its record's payload, valid while the
// payload is. `vector` holds dim float32s, not necessarily aligned.
struct OpView {
  bool is_delete = false;
  uint64_t id = 0;
  uint32_t dim = 0;
  std::span<const std::byte> vector;
  std::span<const std::byte> payload;
};
// The upserts and deletes of a record, in order, appended to `out` without
// copying any vector: what replay applies. A batch is checked whole before
// `out` is touched, so a damaged one yields an error and no ops. A
// checkpoint marker yields none.
Status DecodeOpViews(RecordType type, std::span<const std::byte> payload, uint64_t lsn, std::vector<OpView>& out);

}  // namespace vecwal::wal
