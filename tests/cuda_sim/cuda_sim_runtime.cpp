// The CPU simulation of the CUDA execution model declared in cuda_sim_runtime.h.
//
// Each simulated GPU thread is a fiber: its own stack (mmap'd, with a guard page) and a
// cooperative switch to the next runnable fiber of its CTA whenever it waits at a barrier. A
// fiber switch costs a few nanoseconds (x86-64: the callee-saved registers and the stack pointer;
// elsewhere, or with -DCUDA_SIM_USE_UCONTEXT, swapcontext), against tens of microseconds for
// waking one of 128 OS threads per barrier on a small machine; the kernels hit a warp barrier at
// every shuffle and every mma. AddressSanitizer and ThreadSanitizer are told about every switch.
#include "cuda_sim_runtime.h"

#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define CUDA_SIM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CUDA_SIM_ASAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define CUDA_SIM_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CUDA_SIM_TSAN 1
#endif
#endif
#if defined(CUDA_SIM_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#if defined(CUDA_SIM_TSAN)
#include <sanitizer/tsan_interface.h>
#endif

#if defined(__x86_64__) && !defined(CUDA_SIM_USE_UCONTEXT)
#define CUDA_SIM_ASM_SWITCH 1
// void cuda_sim_switch_stack(void** save_sp, void* load_sp): pushes the callee-saved registers,
// stores the stack pointer to *save_sp, switches to load_sp and pops the registers saved there.
asm(R"(
  .pushsection .text
  .globl cuda_sim_switch_stack
  .hidden cuda_sim_switch_stack
  .type cuda_sim_switch_stack, @function
  .p2align 4
cuda_sim_switch_stack:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size cuda_sim_switch_stack, .-cuda_sim_switch_stack
  .popsection
)");
extern "C" void cuda_sim_switch_stack(void** save_sp, void* load_sp);
#else
#include <ucontext.h>
#endif

namespace reformer::cuda {
alignas(16) thread_local unsigned char shared_bytes[cuda_sim::kMaxSharedBytes];
}  // namespace reformer::cuda

namespace cuda_sim {
namespace {
thread_local uint3 thread_index, block_index, block_dims, grid_dims;
}  // namespace

const uint3& thread_idx() { return thread_index; }
const uint3& block_idx() { return block_index; }
const uint3& block_dim() { return block_dims; }
const uint3& grid_dim() { return grid_dims; }

namespace {

#if defined(CUDA_SIM_ASAN) || defined(CUDA_SIM_TSAN)
constexpr size_t kStackBytes = 1 << 20;  // instrumented frames are larger
#else
constexpr size_t kStackBytes = 256 << 10;  // committed lazily; the kernels need a few KiB
#endif
constexpr unsigned kFullMask = 0xffffffffu;
constexpr unsigned char kCanary = 0xA5;

// ------------------------------------------------------------------------------- contexts

struct Context {
#if defined(CUDA_SIM_ASM_SWITCH)
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
  const void* stack_bottom = nullptr;  // for the sanitizers
  size_t stack_size = 0;
  void* asan_fake_stack = nullptr;
  void* tsan_fiber = nullptr;
};

void switch_context(Context& from, Context& to) {
#if defined(CUDA_SIM_ASAN)
  __sanitizer_start_switch_fiber(&from.asan_fake_stack, to.stack_bottom, to.stack_size);
#endif
#if defined(CUDA_SIM_TSAN)
  __tsan_switch_to_fiber(to.tsan_fiber, 0);  // synchronising: fibers of a CTA are sequential
#endif
#if defined(CUDA_SIM_ASM_SWITCH)
  cuda_sim_switch_stack(&from.sp, to.sp);
#else
  swapcontext(&from.uc, &to.uc);
#endif
#if defined(CUDA_SIM_ASAN)
  __sanitizer_finish_switch_fiber(from.asan_fake_stack, nullptr, nullptr);
#endif
}

struct Stack {
  char* lowest = nullptr;  // lowest usable byte; the page below it is a guard page
  size_t size = 0;
};

Stack allocate_stack() {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  void* map = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
  if (map == MAP_FAILED) throw std::runtime_error("cuda_sim: cannot map a fiber stack");
  mprotect(map, page, PROT_NONE);  // overflow faults instead of corrupting a neighbour
  return {static_cast<char*>(map) + page, kStackBytes};
}

// ------------------------------------------------------------------------------- barriers

// A barrier over threads first..first+expected-1 of the CTA (a warp, or the whole CTA).
struct Barrier {
  int first = 0, expected = 0, arrived = 0;
};

enum class Op : uint8_t { kSyncThreads, kSyncThreadsOr, kSyncWarp, kShuffle, kShuffleXor, kAny, kMma };

const char* op_name(Op op) {
  switch (op) {
    case Op::kSyncThreads: return "__syncthreads";
    case Op::kSyncThreadsOr: return "__syncthreads_or";
    case Op::kSyncWarp: return "__syncwarp";
    case Op::kShuffle: return "__shfl_sync";
    case Op::kShuffleXor: return "__shfl_xor_sync";
    case Op::kAny: return "__any_sync";
    case Op::kMma: return "mma.sync";
  }
  return "?";
}

struct WarpState {
  Barrier barrier;
  Op op[kWarpSize];
  uint64_t value[kWarpSize];  // shuffle operands / __any_sync predicates
  uint64_t result[kWarpSize];  // the values read after the barrier
  int any = 0;
  uint32_t a[kWarpSize][4], b[kWarpSize][2];
  bool bf16[kWarpSize];
  double product[16][8];  // A * B of the last mma, exact
};

struct ThreadState {
  uint3 index;
  const Barrier* waiting = nullptr;  // null: runnable (or done)
  bool done = false;
};

// ----------------------------------------------------------------------------- the worker

// Runs CTAs, one at a time, on the host thread that owns it during a launch.
struct Worker {
  Context scheduler;  // the host thread's own stack
  std::vector<Context> contexts;
  std::vector<Stack> stacks;
  std::vector<ThreadState> threads;
  std::vector<WarpState> warps;
  Barrier block_barrier;
  std::vector<Op> block_op;
  std::vector<int> block_flag;
  int block_or = 0;
  int n = 0, current = 0, direction = 1, done_count = 0;
  size_t shared_size = 0;
  const std::function<void()>* kernel = nullptr;
  std::string error;

  ~Worker() {
    for (const Stack& s : stacks) {
      const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
      munmap(s.lowest - page, s.size + page);
    }
#if defined(CUDA_SIM_TSAN)
    for (Context& c : contexts)
      if (c.tsan_fiber != nullptr) __tsan_destroy_fiber(c.tsan_fiber);
#endif
  }

  void fail(const std::string& message) {
    if (error.empty()) error = message;
  }

  std::string where() const {
    const ThreadState& t = threads[current];
    return " (block " + std::to_string(block_index.x) + ", thread " + std::to_string(t.index.x) +
           ")";
  }

  void prepare(int thread_count, size_t shared) {
    n = thread_count;
    shared_size = shared;
    while (static_cast<int>(stacks.size()) < n) stacks.push_back(allocate_stack());
    contexts.resize(std::max<size_t>(contexts.size(), n));
    threads.assign(n, ThreadState{});
    warps.assign(n / kWarpSize, WarpState{});
    block_op.assign(n, Op::kSyncThreads);
    block_flag.assign(n, 0);
#if defined(CUDA_SIM_TSAN)
    scheduler.tsan_fiber = __tsan_get_current_fiber();
    for (int i = 0; i < n; ++i)
      if (contexts[i].tsan_fiber == nullptr) contexts[i].tsan_fiber = __tsan_create_fiber(0);
#endif
#if defined(CUDA_SIM_ASAN)
    pthread_attr_t attr;
    void* addr = nullptr;
    size_t size = 0;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
      pthread_attr_getstack(&attr, &addr, &size);
      pthread_attr_destroy(&attr);
    }
    scheduler.stack_bottom = addr;
    scheduler.stack_size = size;
#endif
  }

  void init_fiber(int i);

  // The next runnable thread after `current` in scheduling order, or -1.
  int next_runnable() const {
    for (int k = 1; k <= n; ++k) {
      const int i = ((current + direction * k) % n + n) % n;
      if (!threads[i].done && threads[i].waiting == nullptr) return i;
    }
    return -1;
  }

  std::string deadlock_report() const {
    int done = 0, at_block = 0, at_warp = 0;
    for (const ThreadState& t : threads) {
      if (t.done) ++done;
      else if (t.waiting == &block_barrier) ++at_block;
      else if (t.waiting != nullptr) ++at_warp;
    }
    return "deadlock in block " + std::to_string(block_index.x) + ": " + std::to_string(done) +
           " threads returned, " + std::to_string(at_block) + " wait at a CTA barrier, " +
           std::to_string(at_warp) +
           " at a warp collective (a barrier that not every thread of its CTA/warp reaches)";
  }

  // Called by a fiber that cannot continue (it waits, or it returned): runs the next runnable
  // fiber, or ends the CTA (all returned, or deadlock) by going back to the scheduler.
  void leave() {
    const int me = current;
    const int next = next_runnable();
    if (next >= 0) {
      current = next;
      thread_index = threads[next].index;
      switch_context(contexts[me], contexts[next]);
      return;  // resumed: the fiber that switched here set current and thread_index
    }
    if (done_count < n) {
      fail(deadlock_report());
    }
    switch_context(contexts[me], scheduler);
    // a returned or deadlocked fiber is never resumed
    std::abort();
  }

  // Waits at `b`; the last thread to arrive runs `on_complete` (before any waiter continues).
  template <typename F>
  void wait_at(Barrier& b, F&& on_complete) {
    if (++b.arrived < b.expected) {
      threads[current].waiting = &b;
      leave();
      return;
    }
    on_complete();
    b.arrived = 0;
    for (int i = b.first; i < b.first + b.expected; ++i)
      if (threads[i].waiting == &b) threads[i].waiting = nullptr;
  }

  // Runs CTA `cta` to completion; false when the simulation found an error.
  bool run_cta(int64_t cta) {
    block_index = make_uint3(static_cast<unsigned>(cta), 0, 0);
    unsigned char* shared = reformer::cuda::shared_bytes;
    std::memset(shared, (cta & 1) ? 0x7F : 0xFF, shared_size);
    for (int i = 0; i < n; ++i) {
      threads[i] = ThreadState{make_uint3(static_cast<unsigned>(i), 0, 0), nullptr, false};
      init_fiber(i);
    }
    for (int w = 0; w < n / kWarpSize; ++w) warps[w].barrier = Barrier{w * kWarpSize, kWarpSize, 0};
    block_barrier = Barrier{0, n, 0};
    done_count = 0;
    direction = (cta & 1) ? -1 : 1;
    current = direction > 0 ? 0 : n - 1;
    thread_index = threads[current].index;
    switch_context(scheduler, contexts[current]);
#if !defined(CUDA_SIM_ASAN)  // under ASan the tail is poisoned instead
    for (size_t i = shared_size; i < kMaxSharedBytes; ++i) {
      if (shared[i] != kCanary) {
        fail("block " + std::to_string(cta) + " wrote shared memory at byte " +
             std::to_string(i) + ", past the " + std::to_string(shared_size) +
             " bytes of its launch");
        std::memset(shared + shared_size, kCanary, kMaxSharedBytes - shared_size);
        break;
      }
    }
#endif
    return error.empty();
  }
};

thread_local Worker* current_worker = nullptr;

Worker& worker() {
  Worker* w = current_worker;
  if (w == nullptr) {
    std::fprintf(stderr, "cuda_sim: a device function was called outside cuda_sim::launch\n");
    std::abort();
  }
  return *w;
}

void fiber_main() {
  Worker& w = *current_worker;
#if defined(CUDA_SIM_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
  (*w.kernel)();
  w.threads[w.current].done = true;
  ++w.done_count;
  w.leave();
}

// Under ASan: a fiber's last frames (fiber_main, leave, switch_context) never return, so their
// redzones stay poisoned; instrumented prologues assume the memory below the stack pointer is
// clean, so the top of a stack (far deeper than any kernel's call chain) is cleared before reuse.
void clear_stack_poison(const Stack& s) {
#if defined(CUDA_SIM_ASAN)
  const size_t used = std::min<size_t>(s.size, 128 << 10);
  __asan_unpoison_memory_region(s.lowest + s.size - used, used);
#else
  (void)s;
#endif
}

#if defined(CUDA_SIM_ASM_SWITCH)
void Worker::init_fiber(int i) {
  Context& c = contexts[i];
  const Stack& s = stacks[i];
  clear_stack_poison(s);
  // Top of the stack, 16-byte aligned. cuda_sim_switch_stack pops six registers and returns to
  // fiber_main, which then sees a stack aligned as after a call (rsp = 8 mod 16).
  auto* sp = reinterpret_cast<uintptr_t*>(
      (reinterpret_cast<uintptr_t>(s.lowest) + s.size) & ~uintptr_t{15});
  *--sp = 0;  // fiber_main's return address: it never returns
  *--sp = reinterpret_cast<uintptr_t>(&fiber_main);
  for (int r = 0; r < 6; ++r) *--sp = 0;  // rbp, rbx, r12-r15
  c.sp = sp;
  c.stack_bottom = s.lowest;
  c.stack_size = s.size;
  c.asan_fake_stack = nullptr;
}
#else
void Worker::init_fiber(int i) {
  Context& c = contexts[i];
  const Stack& s = stacks[i];
  clear_stack_poison(s);
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = s.lowest;
  c.uc.uc_stack.ss_size = s.size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, &fiber_main, 0);
  c.stack_bottom = s.lowest;
  c.stack_size = s.size;
  c.asan_fake_stack = nullptr;
}
#endif

// Lane index of the current thread and the state of its warp.
struct Lane {
  Worker& w;
  WarpState& warp;
  int lane;
};

Lane this_lane() {
  Worker& w = worker();
  const int t = w.current;
  return {w, w.warps[t / kWarpSize], t % kWarpSize};
}

// Checks, at the last arrival, that the warp's 32 lanes called the same collective.
void check_uniform(Worker& w, const WarpState& warp) {
  for (int l = 1; l < kWarpSize; ++l) {
    if (warp.op[l] != warp.op[0]) {
      w.fail(std::string("warp collectives differ across a warp: lane 0 at ") + op_name(warp.op[0]) +
             ", lane " + std::to_string(l) + " at " + op_name(warp.op[l]) + w.where());
      return;
    }
  }
}

void check_mask(Worker& w, unsigned mask, const char* what) {
  if (mask != kFullMask) w.fail(std::string(what) + " with a partial mask (not simulated)" + w.where());
}

// ------------------------------------------------------------------------- mma emulation

float operand_to_float(uint16_t bits, bool bf16) {
  return bf16 ? bf16_bits_to_float(bits) : half_bits_to_float(bits);
}

// Element i of a fragment: registers hold two 16-bit elements, the lower index in the low half
// (PTX ISA: "the lower-indexed element in the lower half of the register").
uint16_t fragment_element(const uint32_t* regs, int i) {
  const uint32_t r = regs[i / 2];
  return static_cast<uint16_t>((i % 2 == 0) ? (r & 0xffffu) : (r >> 16));
}

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32, transcribed from the PTX ISA
// section "Matrix Fragments for mma.m16n8k16 with floating point type" (groupID = laneid >> 2,
// threadID_in_group = laneid % 4):
//   A, a0..a7:  row = groupID            for ai where 0 <= i < 2 || 4 <= i < 6
//                     groupID + 8        otherwise
//               col = threadID_in_group * 2 + (i & 0x1)       for ai where i < 4
//                     threadID_in_group * 2 + (i & 0x1) + 8   for ai where i >= 4
//   B, b0..b3:  row = threadID_in_group * 2 + (i & 0x1)       for bi where i < 2
//                     threadID_in_group * 2 + (i & 0x1) + 8   for bi where i >= 2
//               col = groupID
//   C/D, c0..c3: row = groupID for ci where i < 2, groupID + 8 for i >= 2
//                col = threadID_in_group * 2 + (i & 0x1)
void multiply_fragments(WarpState& warp) {
  double A[16][16], B[16][8];
  const bool bf16 = warp.bf16[0];
  for (int lane = 0; lane < kWarpSize; ++lane) {
    const int group = lane >> 2, tig = lane % 4;
    for (int i = 0; i < 8; ++i) {
      const int row = ((0 <= i && i < 2) || (4 <= i && i < 6)) ? group : group + 8;
      const int col = i < 4 ? tig * 2 + (i & 0x1) : tig * 2 + (i & 0x1) + 8;
      A[row][col] = operand_to_float(fragment_element(warp.a[lane], i), bf16);
    }
    for (int i = 0; i < 4; ++i) {
      const int row = i < 2 ? tig * 2 + (i & 0x1) : tig * 2 + (i & 0x1) + 8;
      B[row][group] = operand_to_float(fragment_element(warp.b[lane], i), bf16);
    }
  }
  // Products of two 11-bit (or 8-bit) significands and their sum over k = 16 are exact in double
  // except for extreme exponent ranges: the one rounding is to fp32, per accumulator.
  for (int m = 0; m < 16; ++m) {
    for (int c = 0; c < 8; ++c) {
      double sum = 0;
      for (int k = 0; k < 16; ++k) sum += A[m][k] * B[k][c];
      warp.product[m][c] = sum;
    }
  }
}

std::mutex pool_mutex;
std::vector<std::unique_ptr<Worker>> pool;  // idle workers, reused across launches

}  // namespace

// --------------------------------------------------------------------- device-side calls

void sync_threads() {
  Worker& w = worker();
  w.block_op[w.current] = Op::kSyncThreads;
  w.wait_at(w.block_barrier, [&] {
    for (int t = 0; t < w.n; ++t)
      if (w.block_op[t] != Op::kSyncThreads)
        w.fail(std::string("__syncthreads met ") + op_name(w.block_op[t]) + " at thread " +
               std::to_string(t) + w.where());
  });
}

int sync_threads_or(int predicate) {
  Worker& w = worker();
  w.block_op[w.current] = Op::kSyncThreadsOr;
  w.block_flag[w.current] = predicate != 0;
  w.wait_at(w.block_barrier, [&] {
    int any = 0;
    for (int t = 0; t < w.n; ++t) {
      if (w.block_op[t] != Op::kSyncThreadsOr)
        w.fail(std::string("__syncthreads_or met ") + op_name(w.block_op[t]) + " at thread " +
               std::to_string(t) + w.where());
      any |= w.block_flag[t];
    }
    w.block_or = any;
  });
  return w.block_or;  // stays valid until this thread arrives at the next CTA barrier
}

void sync_warp(unsigned mask) {
  Lane l = this_lane();
  check_mask(l.w, mask, "__syncwarp");
  l.warp.op[l.lane] = Op::kSyncWarp;
  l.w.wait_at(l.warp.barrier, [&] { check_uniform(l.w, l.warp); });
}

uint64_t shuffle(unsigned mask, uint64_t bits, int lane_arg, bool xor_mode, int width) {
  Lane l = this_lane();
  check_mask(l.w, mask, xor_mode ? "__shfl_xor_sync" : "__shfl_sync");
  if (width != kWarpSize) l.w.fail("shuffle with width != 32 (not simulated)" + l.w.where());
  int src = 0;
  if (xor_mode) {
    if (lane_arg < 0 || lane_arg >= kWarpSize)
      l.w.fail("__shfl_xor_sync lane mask out of 0..31" + l.w.where());
    src = (l.lane ^ lane_arg) & (kWarpSize - 1);
  } else {
    src = ((lane_arg % kWarpSize) + kWarpSize) % kWarpSize;  // srcLane modulo the width
  }
  l.warp.op[l.lane] = xor_mode ? Op::kShuffleXor : Op::kShuffle;
  l.warp.value[l.lane] = bits;
  l.w.wait_at(l.warp.barrier, [&] {
    check_uniform(l.w, l.warp);
    std::memcpy(l.warp.result, l.warp.value, sizeof(l.warp.result));
  });
  return l.warp.result[src];  // valid until this lane arrives at the warp's next collective
}

int any_sync(unsigned mask, int predicate) {
  Lane l = this_lane();
  check_mask(l.w, mask, "__any_sync");
  l.warp.op[l.lane] = Op::kAny;
  l.warp.value[l.lane] = predicate != 0;
  l.w.wait_at(l.warp.barrier, [&] {
    check_uniform(l.w, l.warp);
    int any = 0;
    for (int k = 0; k < kWarpSize; ++k) any |= static_cast<int>(l.warp.value[k]);
    l.warp.any = any;
  });
  return l.warp.any;
}

void mma_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2], bool bf16) {
  Lane l = this_lane();
  l.warp.op[l.lane] = Op::kMma;
  std::memcpy(l.warp.a[l.lane], a, sizeof(uint32_t) * 4);
  std::memcpy(l.warp.b[l.lane], b, sizeof(uint32_t) * 2);
  l.warp.bf16[l.lane] = bf16;
  l.w.wait_at(l.warp.barrier, [&] {
    check_uniform(l.w, l.warp);
    for (int k = 1; k < kWarpSize; ++k)
      if (l.warp.bf16[k] != l.warp.bf16[0]) l.w.fail("mma.sync with mixed operand types" + l.w.where());
    multiply_fragments(l.warp);
  });
  const int group = l.lane >> 2, tig = l.lane % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = i < 2 ? group : group + 8;
    const int col = tig * 2 + (i & 0x1);
    d[i] = static_cast<float>(static_cast<double>(d[i]) + l.warp.product[row][col]);
  }
}

// --------------------------------------------------------------------------- conversions

float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);  // inf, NaN (payload kept)
  } else if (exponent == 0) {
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);  // zero, subnormal
    return sign ? -magnitude : magnitude;
  } else {
    bits = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float bf16_bits_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t float_to_half_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (ax >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 (or inf): rounds to inf
  if (ax < 0x38800000u) {  // below 2^-14: a subnormal half, m * 2^-24 with m = rint(|f| * 2^24)
    const float scaled = std::fabs(f) * 16777216.0f;  // exact
    return sign | static_cast<uint16_t>(std::nearbyint(scaled));  // 1024 is the smallest normal
  }
  uint32_t h = (((ax >> 23) - 127 + 15) << 10) | ((ax & 0x7fffffu) >> 13);
  const uint32_t rest = ax & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // a carry may reach the exponent
  return sign | static_cast<uint16_t>(h);
}

uint16_t float_to_bf16_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // NaN
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

// -------------------------------------------------------------------------------- launch

int host_threads() {
  if (const char* env = std::getenv("CUDA_SIM_HOST_THREADS")) {
    const int n = std::atoi(env);
    if (n >= 1) return n;
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return static_cast<int>(std::clamp(hw, 1u, 8u));
}

void launch(int64_t ctas, int threads, size_t shared_bytes, const std::function<void()>& kernel) {
  if (threads <= 0 || threads > kMaxThreadsPerBlock || threads % kWarpSize != 0)
    throw std::runtime_error("cuda_sim::launch: " + std::to_string(threads) +
                             " threads per block (must be a multiple of 32 up to 1024)");
  if (shared_bytes > kMaxSharedBytes)
    throw std::runtime_error("cuda_sim::launch: " + std::to_string(shared_bytes) +
                             " bytes of dynamic shared memory, above the 227 KiB of sm_90");
  if (ctas < 0 || ctas > 0x7fffffff)
    throw std::runtime_error("cuda_sim::launch: grid of " + std::to_string(ctas) + " blocks");
  if (ctas == 0) return;
  if (current_worker != nullptr) throw std::runtime_error("cuda_sim::launch inside a kernel");

  const int n_hosts = static_cast<int>(std::min<int64_t>(host_threads(), ctas));
  std::vector<std::unique_ptr<Worker>> workers;
  {
    std::lock_guard<std::mutex> lock(pool_mutex);
    while (static_cast<int>(workers.size()) < n_hosts) {
      if (pool.empty()) {
        workers.push_back(std::make_unique<Worker>());
      } else {
        workers.push_back(std::move(pool.back()));
        pool.pop_back();
      }
    }
  }
  std::atomic<int64_t> next_cta{0};
  std::atomic<bool> failed{false};
  std::mutex error_mutex;
  std::string first_error;

  const auto host = [&](Worker& w) {
    current_worker = &w;
    block_dims = make_uint3(static_cast<unsigned>(threads), 1, 1);
    grid_dims = make_uint3(static_cast<unsigned>(ctas), 1, 1);
    w.error.clear();
    w.kernel = &kernel;
    w.prepare(threads, shared_bytes);
    unsigned char* tail = reformer::cuda::shared_bytes + shared_bytes;
    const size_t tail_size = kMaxSharedBytes - shared_bytes;
#if defined(CUDA_SIM_ASAN)
    __asan_poison_memory_region(tail, tail_size);
#else
    std::memset(tail, kCanary, tail_size);
#endif
    while (!failed.load()) {
      const int64_t cta = next_cta.fetch_add(1);
      if (cta >= ctas) break;
      if (!w.run_cta(cta)) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!failed.exchange(true)) first_error = w.error;
      }
    }
#if defined(CUDA_SIM_ASAN)
    __asan_unpoison_memory_region(tail, tail_size);
#endif
    current_worker = nullptr;
  };
  std::vector<std::thread> helpers;
  for (int h = 1; h < n_hosts; ++h) helpers.emplace_back(host, std::ref(*workers[h]));
  host(*workers[0]);
  for (std::thread& t : helpers) t.join();
  {
    std::lock_guard<std::mutex> lock(pool_mutex);
    for (auto& w : workers) pool.push_back(std::move(w));
  }
  if (failed.load()) throw std::runtime_error("cuda_sim: " + first_error);
}

}  // namespace cuda_sim
