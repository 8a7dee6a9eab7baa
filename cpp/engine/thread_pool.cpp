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
// Busy-wait iterations before a worker goes to sleep (tens of microseconds): long enough to bridge
// the gap between the jobs of one eval, short enough not to burn a core between evals.
constexpr int kSpinIters = 1 << 15;
}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_(n_threads < 1 ? 1 : n_threads) {
    threads_.reserve(static_cast<size_t>(n_ - 1));
    for (int i = 1; i < n_; ++i) threads_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
    stop_.store(true, std::memory_order_seq_cst);
    generation_.fetch_add(1, std::memory_order_seq_cst);
    {
        std::lock_guard<std::mutex> lock(mutex_);
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
}

void ThreadPool::run_raw(void* ctx, call_fn call) {
    if (n_ == 1) {
        call(ctx, 0, 1);
        return;
    }
    ctx_ = ctx;
    call_ = call;
    pending_.store(n_ - 1, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_seq_cst);  // publishes ctx_/call_/pending_
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
        { std::lock_guard<std::mutex> lock(mutex_); }
        cv_.notify_all();
    }
    call(ctx, 0, n_);
    for (int spins = 0; pending_.load(std::memory_order_acquire) != 0; ++spins) {
        if (spins < kSpinIters) QC_PAUSE();
        else std::this_thread::yield();
    }
}

void ThreadPool::worker(int index) {
    uint64_t seen = 0;
    for (;;) {
        uint64_t g = generation_.load(std::memory_order_acquire);
        for (int spins = 0; g == seen && spins < kSpinIters; ++spins) {
            QC_PAUSE();
            g = generation_.load(std::memory_order_acquire);
        }
        if (g == seen) {
            std::unique_lock<std::mutex> lock(mutex_);
            sleepers_.fetch_add(1, std::memory_order_seq_cst);
            while ((g = generation_.load(std::memory_order_seq_cst)) == seen) cv_.wait(lock);
            sleepers_.fetch_sub(1, std::memory_order_relaxed);
        }
        seen = g;
        if (stop_.load(std::memory_order_acquire)) return;
        call_(ctx_, index, n_);
        pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
}

}  // namespace quantconv::engine
