// Standalone tests of engine/thread_pool (no Python): every chunk of every job runs exactly once, with
// a valid thread index and the job's chunk count; jobs of every size from 1 chunk to more chunks than
// threads; uneven chunks (the fast threads steal the slow one's range); workers that went to sleep
// between jobs wake up; and thousands of back-to-back tiny jobs (the decode pattern) stay exact.
// Exit status 0 when everything passes. Runs under ASan/UBSan too (cpp/tests/run_native_tests.sh).
#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "engine/thread_pool.h"

using quantconv::engine::ThreadPool;

namespace {

int g_failures = 0;
int g_checks = 0;

void check(bool ok, const std::string& what) {
    ++g_checks;
    if (!ok && ++g_failures <= 40) std::fprintf(stderr, "FAILED: %s\n", what.c_str());
}

// Runs one job of n chunks and checks that each ran once; slow_chunk (if >= 0) sleeps a while.
void one_job(ThreadPool& pool, int64_t n, int64_t slow_chunk, const std::string& what) {
    std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
    for (auto& h : hits) h.store(0);
    std::atomic<int> bad_thread{0}, bad_count{0};
    pool.run(n, [&](int64_t c, int64_t nc, int thread) {
        if (thread < 0 || thread >= pool.size()) bad_thread.fetch_add(1);
        if (nc != n) bad_count.fetch_add(1);
        if (c == slow_chunk) std::this_thread::sleep_for(std::chrono::milliseconds(3));
        if (c >= 0 && c < n) hits[static_cast<size_t>(c)].fetch_add(1);
    });
    bool once = true;
    for (auto& h : hits) once = once && h.load() == 1;
    check(once, what + ": every chunk exactly once");
    check(bad_thread.load() == 0, what + ": thread index in [0, size)");
    check(bad_count.load() == 0, what + ": chunk count passed through");
}

void test_sizes(int threads) {
    ThreadPool pool(threads);
    check(pool.size() == threads, "size()");
    const std::string who = std::to_string(threads) + " threads";
    for (int64_t n : {1, 2, 3, 5, 7, 8, 16, 17, 64, 1000})
        one_job(pool, n, -1, who + ", " + std::to_string(n) + " chunks");
    for (int64_t n : {2, 9, 40}) {
        one_job(pool, n, 0, who + ", slow first chunk of " + std::to_string(n));
        one_job(pool, n, n - 1, who + ", slow last chunk of " + std::to_string(n));
    }
    // idle long enough for the workers to go to sleep, then more work
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    one_job(pool, 33, -1, who + ", after the workers slept");
    // the decode pattern: many tiny jobs back to back, checked by a running sum
    std::atomic<int64_t> sum{0};
    int64_t want = 0;
    for (int job = 0; job < 3000; ++job) {
        const int64_t n = 1 + job % 20;
        pool.run(n, [&](int64_t c, int64_t, int) { sum.fetch_add(c + 1); });
        want += n * (n + 1) / 2;
    }
    check(sum.load() == want, who + ": 3000 small jobs, every chunk once");
}

}  // namespace

int main() {
    for (int threads : {1, 2, 3, 4, 8}) test_sizes(threads);
    if (g_failures) {
        std::fprintf(stderr, "test_thread_pool: %d of %d checks FAILED\n", g_failures, g_checks);
        return 1;
    }
    std::printf("test_thread_pool: all %d checks passed\n", g_checks);
    return 0;
}
