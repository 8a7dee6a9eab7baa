#include "engine/thread_pool.h"

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <immintrin.h>
#define QC_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define QC_PAUSE() asm volatile("yield")
#else
#define QC_PAUSE() ((void)0)
#endif

namespace quantconv::engine {
namespace {

// Busy-wait rounds of a worker before it sleeps: long enough to bridge the gaps between the jobs of
// one eval (and a short Python round trip between evals), short enough not to burn a core when idle.
constexpr int kWorkerSpins = 1 << 14;
// Busy-wait rounds of the caller waiting for chunks still running on workers, before it yields.
constexpr int kCallerSpins = 1 << 10;

constexpr uint64_t kIdxBits = 20, kCountBits = 20;
constexpr uint64_t kIdxMask = (uint64_t{1} << kIdxBits) - 1;
constexpr uint64_t kCountMask = (uint64_t{1} << kCountBits) - 1;
constexpr uint32_t kGenMask = (uint32_t{1} << 24) - 1;

inline uint32_t gen_of(uint64_t w) { return static_cast<uint32_t>(w >> (kIdxBits + kCountBits)); }
inline int64_t count_of(uint64_t w) { return static_cast<int64_t>((w >> kIdxBits) & kCountMask); }
inline int64_t idx_of(uint64_t w) { return static_cast<int64_t>(w & kIdxMask); }
inline uint64_t pack(uint32_t gen, int64_t count) {
    return (static_cast<uint64_t>(gen) << (kIdxBits + kCountBits)) | (static_cast<uint64_t>(count) << kIdxBits);
}

}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_(n_threads < 1 ? 1 : n_threads) {
    threads_.reserve(static_cast<size_t>(n_ - 1));
    for (int i = 1; i < n_; ++i) threads_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
    stop_.store(true, std::memory_order_seq_cst);
    gen_ = (gen_ + 1) & kGenMask;
    claim_.store(pack(gen_, 0), std::memory_order_seq_cst);
    { std::lock_guard<std::mutex> lock(mutex_); }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
}

// Claims chunks of job `gen` until none is left (or the job changed) and runs them.
void ThreadPool::work(uint64_t w, uint32_t gen, int thread) {
    for (;;) {
        if (gen_of(w) != gen || idx_of(w) >= count_of(w)) return;
        if (claim_.compare_exchange_weak(w, w + 1, std::memory_order_acq_rel, std::memory_order_acquire)) {
            // a claimed chunk pins the job: the caller waits for it before touching ctx_/call_ again
            call_(ctx_, idx_of(w), count_of(w), thread);
            done_.fetch_add(1, std::memory_order_acq_rel);
            w = claim_.load(std::memory_order_acquire);
        }
    }
}

void ThreadPool::run_raw(int64_t n_chunks, void* ctx, call_fn call) {
    if (n_chunks < 1) n_chunks = 1;
    if (n_chunks > kMaxChunks) n_chunks = kMaxChunks;
    if (n_ == 1 || n_chunks == 1) {
        for (int64_t c = 0; c < n_chunks; ++c) call(ctx, c, n_chunks, 0);
        return;
    }
    ctx_ = ctx;
    call_ = call;
    done_.store(0, std::memory_order_relaxed);
    gen_ = (gen_ + 1) & kGenMask;
    const uint64_t w = pack(gen_, n_chunks);
    claim_.store(w, std::memory_order_seq_cst);  // publishes ctx_, call_ and the reset done_
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
        { std::lock_guard<std::mutex> lock(mutex_); }
        cv_.notify_all();
    }
    work(w, gen_, 0);
    for (int spins = 0; done_.load(std::memory_order_acquire) != n_chunks; ++spins) {
        if (spins < kCallerSpins) QC_PAUSE();
        else std::this_thread::yield();
    }
}

void ThreadPool::worker(int thread) {
    uint32_t seen = 0;
    for (;;) {
        uint64_t w = claim_.load(std::memory_order_acquire);
        for (int spins = 0; gen_of(w) == seen && spins < kWorkerSpins; ++spins) {
            QC_PAUSE();
            w = claim_.load(std::memory_order_acquire);
        }
        if (gen_of(w) == seen) {
            std::unique_lock<std::mutex> lock(mutex_);
            sleepers_.fetch_add(1, std::memory_order_seq_cst);
            while (gen_of(w = claim_.load(std::memory_order_seq_cst)) == seen) cv_.wait(lock);
            sleepers_.fetch_sub(1, std::memory_order_relaxed);
        }
        seen = gen_of(w);
        if (stop_.load(std::memory_order_acquire)) return;
        work(w, seen, thread);
    }
}

}  // namespace quantconv::engine
