// A small fork-join pool of std::threads for the engine.
//
// run(n_chunks, fn) calls fn(chunk, n_chunks, thread) once for every chunk in [0, n_chunks) and returns
// when all have finished. `thread` (0 = the caller, 1..size()-1 the workers) indexes per-thread scratch.
//
// Chunks are dealt out in contiguous ranges, one per thread (thread i owns [i n / N, (i + 1) n / N)),
// each range with its own claim counter on its own cache line: a thread claims its chunks without
// touching a line another thread writes, so a decode step's ~150 small jobs cost no contended atomics
// per chunk (one shared counter per job, which every chunk claimed and retired through, made each
// claim a cache-line transfer). A thread that runs out steals from the other ranges, so a worker the
// OS has not scheduled (other processes on the cores) stalls nothing: the caller does its chunks.
// Each thread reports its finished chunks once per job.
//
// Workers spin between jobs for kSpinNs of wall time (a pause count means different times on
// different cores), yielding the core now and then after the first part, then sleep on a condition
// variable so an idle model costs no CPU. Nothing is allocated after construction.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace quantconv::engine {

class ThreadPool {
   public:
    static constexpr int64_t kMaxChunks = (int64_t{1} << 20) - 1;

    explicit ThreadPool(int n_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return n_; }

    // n_chunks is clamped to [1, kMaxChunks]; a caller wanting more tasks gives each chunk several.
    template <class F>
    void run(int64_t n_chunks, F&& fn) {
        run_raw(n_chunks, &fn, [](void* ctx, int64_t c, int64_t n, int t) { (*static_cast<std::remove_reference_t<F>*>(ctx))(c, n, t); });
    }

   private:
    using call_fn = void (*)(void*, int64_t, int64_t, int);
    // One thread's range of the current job: generation (24 bits) | range end (20) | next chunk (20).
    struct alignas(64) Range {
        std::atomic<uint64_t> word{0};
    };
    void run_raw(int64_t n_chunks, void* ctx, call_fn call);
    void work(uint32_t gen, int thread);  // runs chunks of job `gen`: its own range, then steals
    int64_t drain(Range& r, uint32_t gen, int thread);
    void worker(int thread);

    int n_ = 1;
    std::vector<std::thread> threads_;
    std::unique_ptr<Range[]> ranges_;
    uint32_t gen_ = 0;          // the caller's count of jobs (24 bits are published)
    int64_t n_chunks_ = 0;      // the current job's; read only by a thread holding a claimed chunk
    void* ctx_ = nullptr;
    call_fn call_ = nullptr;
    alignas(64) std::atomic<uint32_t> job_{0};   // generation of the latest job (what workers wait on)
    alignas(64) std::atomic<int64_t> done_{0};   // chunks finished in the current job
    alignas(64) std::atomic<int> sleepers_{0};
    std::atomic<bool> stop_{false};
    std::mutex mutex_;
    std::condition_variable cv_;
};

// [begin, end) of part i of n of the range [0, total), boundaries rounded to multiples of `align`.
inline void split_range(int64_t total, int64_t i, int64_t n, int64_t align, int64_t& begin, int64_t& end) {
    const int64_t units = (total + align - 1) / align;
    const int64_t u0 = units * i / n, u1 = units * (i + 1) / n;
    begin = u0 * align < total ? u0 * align : total;
    end = u1 * align < total ? u1 * align : total;
}

}  // namespace quantconv::engine
