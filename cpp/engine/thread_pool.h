// A small fork-join pool of std::threads for the engine.
//
// run(n_chunks, fn) calls fn(chunk, n_chunks, thread) once for every chunk in [0, n_chunks) and returns
// when all have finished. Chunks are handed out dynamically (an atomic counter that the calling thread
// and the workers claim from), so a worker that the OS has not scheduled (other processes on the
// cores) simply gets no chunks instead of stalling the job: the caller then does the work itself.
// `thread` (0 = the caller, 1..size()-1 the workers) indexes per-thread scratch.
//
// Workers spin briefly between jobs (one decode step is a few hundred short jobs), then sleep on a
// condition variable so an idle model costs no CPU. Nothing is allocated after construction.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
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
    void run_raw(int64_t n_chunks, void* ctx, call_fn call);
    void work(uint64_t word, uint32_t gen, int thread);  // claims and runs chunks of job `gen`
    void worker(int thread);

    int n_ = 1;
    std::vector<std::thread> threads_;
    uint32_t gen_ = 0;          // the caller's count of jobs (24 bits are published)
    void* ctx_ = nullptr;       // the current job; read only by a thread holding a claimed chunk
    call_fn call_ = nullptr;
    // generation (24 bits) | chunk count (20 bits) | next chunk (20 bits)
    alignas(64) std::atomic<uint64_t> claim_{0};
    alignas(64) std::atomic<int64_t> done_{0};
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
