// The baselines vecwal-bench measures beside the log, on the same disk and in
// the same run: a naive log, RocksDB's WAL with sync=true, and the raw device
// (an io_uring loop of the same I/O, and fio where it is installed).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "bench/measure.h"
#include "io/aligned_buffer.h"

namespace vecwal::bench {

// Fills `buf` with bytes that are not zeros, and differ with `seed`: what a
// raw baseline writes, since a virtual disk may store zeros as holes.
void FillWithBytes(AlignedBuffer& buf, unsigned seed = 0);

// pwrite + fdatasync per record, under one mutex: what a first attempt does.
double NaiveLogRecordsPerSec(const std::string& dir, int threads, size_t record_bytes, double seconds);
double NaiveLogBatchBytesPerSec(const std::string& dir, size_t record_bytes, size_t batch, double seconds);

// RocksDB puts with WriteOptions::sync = true; nullopt when built without it.
std::optional<double> RocksDbSyncPutsPerSec(const std::string& dir, int threads, size_t value_bytes, double seconds);

// Sequential O_DIRECT writes of `write_bytes`, `depth` in flight, each made
// durable by RWF_DSYNC: the device's ceiling for the log's I/O pattern.
double RawDurableWriteBytesPerSec(const std::string& dir, size_t write_bytes, unsigned depth, double seconds);

// One 4 KiB O_DIRECT pwrite followed by fdatasync, back to back.
Latency RawWriteFdatasyncLatency(const std::string& dir, double seconds);

// fio with io_uring, O_DIRECT, O_DSYNC; nullopt when fio is not installed.
std::optional<double> FioBytesPerSec(const std::string& dir, size_t block_bytes, unsigned depth, double seconds);

}  // namespace vecwal::bench
