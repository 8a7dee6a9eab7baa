#include "engine/thread_pool.h"

#include <chrono>

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

// A worker waiting for the next job spins this long (bridging the gaps between the jobs of one eval
// and a short Python round trip between evals), yielding its core now and then after kYieldAfterNs
// (on a loaded machine the thread it waits for may need that core), then sleeps.
constexpr int64_t kSpinNs = 1'000'000;
constexpr int64_t kYieldAfterNs = 200'000;
// Busy-wait rounds of the caller waiting for chunks still running on workers, before it yields.
constexpr int kCallerSpins = 1 << 10;

constexpr uint64_t kIdxBits = 20, kEndBits = 20;
constexpr uint64_t kIdxMask = (uint64_t{1} << kIdxBits) - 1;
constexpr uint64_t kEndMask = (uint64_t{1} << kEndBits) - 1;
constexpr uint32_t kGenMask = (uint32_t{1} << 24) - 1;

inline uint32_t gen_of(uint64_t w) { return static_cast<uint32_t>(w >> (kIdxBits + kEndBits)); }
inline int64_t end_of(uint64_t w) { return static_cast<int64_t>((w >> kIdxBits) & kEndMask); }
inline int64_t idx_of(uint64_t w) { return static_cast<int64_t>(w & kIdxMask); }
inline uint64_t pack(uint32_t gen, int64_t end, int64_t next) {
    return (static_cast<uint64_t>(gen) << (kIdxBits + kEndBits)) | (static_cast<uint64_t>(end) << kIdxBits) |
           static_cast<uint64_t>(next);
}

int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_(n_threads < 1 ? 1 : n_threads), ranges_(new Range[static_cast<size_t>(n_)]) {
    threads_.reserve(static_cast<size_t>(n_ - 1));
    for (int i = 1; i < n_; ++i) threads_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
    stop_.store(true, std::memory_order_seq_cst);
    gen_ = (gen_ + 1) & kGenMask;
    job_.store(gen_, std::memory_order_seq_cst);
    { std::lock_guard<std::mutex> lock(mutex_); }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
}

// Claims and runs the chunks left in range r while it belongs to job `gen`; returns how many it ran.
// A claimed chunk pins the job: the caller waits for it before it touches ctx_ / call_ again.
int64_t ThreadPool::drain(Range& r, uint32_t gen, int thread) {
    int64_t ran = 0;
    uint64_t w = r.word.load(std::memory_order_acquire);
    for (;;) {
        if (gen_of(w) != gen || idx_of(w) >= end_of(w)) return ran;
        if (r.word.compare_exchange_weak(w, w + 1, std::memory_order_acq_rel, std::memory_order_acquire)) {
            call_(ctx_, idx_of(w), n_chunks_, thread);
            ++ran;
            w = r.word.load(std::memory_order_acquire);
        }
    }
}

void ThreadPool::work(uint32_t gen, int thread) {
    int64_t ran = drain(ranges_[static_cast<size_t>(thread)], gen, thread);
    for (int i = 1; i < n_; ++i) ran += drain(ranges_[static_cast<size_t>((thread + i) % n_)], gen, thread);
    if (ran) done_.fetch_add(ran, std::memory_order_acq_rel);
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
    n_chunks_ = n_chunks;
    done_.store(0, std::memory_order_relaxed);
    gen_ = (gen_ + 1) & kGenMask;
    for (int i = 0; i < n_; ++i) {
        const int64_t b = n_chunks * i / n_, e = n_chunks * (i + 1) / n_;
        ranges_[static_cast<size_t>(i)].word.store(pack(gen_, e, b), std::memory_order_release);
    }
    job_.store(gen_, std::memory_order_seq_cst);  // publishes ctx_, call_, n_chunks_, the ranges, done_
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
        { std::lock_guard<std::mutex> lock(mutex_); }
        cv_.notify_all();
    }
    work(gen_, 0);
    for (int spins = 0; done_.load(std::memory_order_acquire) != n_chunks; ++spins) {
        if (spins < kCallerSpins) QC_PAUSE();
        else std::this_thread::yield();
    }
}

void ThreadPool::worker(int thread) {
    uint32_t seen = 0;
    for (;;) {
        uint32_t g = job_.load(std::memory_order_acquire);
        if (g == seen) {
            const int64_t t0 = now_ns();
            for (int spins = 1; (g = job_.load(std::memory_order_acquire)) == seen; ++spins) {
                QC_PAUSE();
                if (spins % 64 == 0) {
                    const int64_t waited = now_ns() - t0;
                    if (waited > kSpinNs) break;
                    if (waited > kYieldAfterNs) std::this_thread::yield();
                }
            }
        }
        if (g == seen) {
            std::unique_lock<std::mutex> lock(mutex_);
            sleepers_.fetch_add(1, std::memory_order_seq_cst);
            while ((g = job_.load(std::memory_order_seq_cst)) == seen) cv_.wait(lock);
            sleepers_.fetch_sub(1, std::memory_order_relaxed);
        }
        seen = g;
        if (stop_.load(std::memory_order_acquire)) return;
        work(g, thread);
    }
}

}  // namespace quantconv::engine
