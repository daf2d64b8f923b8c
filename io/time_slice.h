// Asking the scheduler for short time slices on latency-bound threads.
#pragma once

#include <cstdint>

#include "io/status.h"

namespace vecwal {

// Asks the kernel to run the calling thread with time slices of `us`
// microseconds (sched_setattr's sched_runtime for a SCHED_OTHER thread:
// EEVDF custom slices, Linux 6.12; the kernel keeps it within 100 us-100 ms;
// 0 restores the default). A thread that wakes with a shorter slice than the
// running thread's preempts it, rather than waiting out the rest of that
// slice (about 3 ms). A durable write wakes several threads in turn (the
// log's, then the writer's), so beside CPU-bound threads such as searches
// each write waited several slices: vecwal-bench mixed measured 16 writers
// beside 2 searchers at ~300 upserts/s with default slices, ~2000 with 100 us.
// The share of CPU a thread gets is unchanged; no privilege is needed and the
// nice value stays. Threads under another policy are left as they are (OK).
// Kernels before 6.12 take the call and ignore the slice; an error means the
// kernel refused the call (a seccomp filter, say), and nothing changed.
Status RequestTimeSlice(uint64_t us);

}  // namespace vecwal
