#include "io/time_slice.h"

#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

namespace vecwal {
namespace {

// The kernel's struct sched_attr (glibc 2.36 has no wrapper or type for it).
struct SchedAttr {
  uint32_t size;
  uint32_t sched_policy;
  uint64_t sched_flags;
  int32_t sched_nice;
  uint32_t sched_priority;
  uint64_t sched_runtime;
  uint64_t sched_deadline;
  uint64_t sched_period;
  uint32_t sched_util_min;
  uint32_t sched_util_max;
};

}  // namespace

Status RequestTimeSlice(uint64_t us) {
  if (sched_getscheduler(0) != SCHED_OTHER) return Status::OK();
  // sched_setattr sets the nice value too: pass the thread's own (per thread
  // on Linux), since an unprivileged thread may not lower it.
  errno = 0;
  const int nice = getpriority(PRIO_PROCESS, 0);
  if (errno != 0) return Status::FromErrno(errno, "getpriority");
  SchedAttr a{};
  a.size = sizeof(a);
  a.sched_policy = SCHED_OTHER;
  a.sched_nice = nice;
  a.sched_runtime = us * 1000;
  if (syscall(SYS_sched_setattr, 0, &a, 0) != 0) return Status::FromErrno(errno, "sched_setattr");
  return Status::OK();
}

}  // namespace vecwal
