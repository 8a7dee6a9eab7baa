// A small fork-join pool of std::threads for the engine. run(fn) calls fn(i, n) for every thread
// index i in [0, n) (index 0 on the calling thread) and returns when all have finished. Workers spin
// briefly between jobs (a decode step is a few hundred short jobs) and then sleep on a condition
// variable, so an idle model costs no CPU. Never allocates after construction.
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
    explicit ThreadPool(int n_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return n_; }

    template <class F>
    void run(F& fn) {
        run_raw(&fn, [](void* ctx, int i, int n) { (*static_cast<F*>(ctx))(i, n); });
    }
    template <class F>
    void run(F&& fn) {
        F f = static_cast<F&&>(fn);
        run(f);
    }

   private:
    using call_fn = void (*)(void*, int, int);
    void run_raw(void* ctx, call_fn call);
    void worker(int index);

    int n_ = 1;
    std::vector<std::thread> threads_;
    // the job: published by bumping generation_
    void* ctx_ = nullptr;
    call_fn call_ = nullptr;
    alignas(64) std::atomic<uint64_t> generation_{0};
    alignas(64) std::atomic<int> pending_{0};
    alignas(64) std::atomic<int> sleepers_{0};
    std::atomic<bool> stop_{false};
    std::mutex mutex_;
    std::condition_variable cv_;
};

// [begin, end) of part i of n of the range [0, total), boundaries rounded to multiples of `align`.
inline void split_range(int64_t total, int i, int n, int64_t align, int64_t& begin, int64_t& end) {
    const int64_t units = (total + align - 1) / align;
    const int64_t u0 = units * i / n, u1 = units * (i + 1) / n;
    begin = u0 * align < total ? u0 * align : total;
    end = u1 * align < total ? u1 * align : total;
}

}  // namespace quantconv::engine
