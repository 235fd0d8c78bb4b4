// warmer.cc: see warmer.h.
#include "warmer.h"

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <new>

namespace bortengine {

Warmer::~Warmer() {
    if (!thread_) return;
    if (pid_ != getpid()) {  // a forked child's copy: the thread is the parent's
        forget_parents();
        return;
    }
    stop();
    {
        std::lock_guard<std::mutex> lock(mu_);
        quit_ = true;
    }
    cv_.notify_one();
    thread_->join();
}

bool Warmer::start() {
    if (running_.load(std::memory_order_acquire)) return true;
    std::unique_lock<std::mutex> lock(mu_, std::defer_lock);
    if (thread_ && pid_ != getpid()) forget_parents();
    lock.lock();
    if (!thread_) {
        pid_ = getpid();
        thread_ = std::make_unique<std::thread>([this] { main(); });
    }
    if (!elsewhere()) return false;
    stop_.store(false, std::memory_order_relaxed);
    wanted_ = true;
    running_.store(true, std::memory_order_release);  // from now: a second start() has nothing to add
    lock.unlock();
    cv_.notify_one();
    return true;
}

void Warmer::forget_parents() {
    // The parent's thread is not in this process: its std::thread can be neither joined nor destroyed, the mutex
    // may have been copied locked by it, and the condition variable with it waiting (destroying that one blocks
    // for ever): new ones are made in their place, the old ones never destroyed.
    thread_.release();  // NOLINT: leaked on purpose
    new (&mu_) std::mutex();
    new (&cv_) std::condition_variable();
    wanted_ = quit_ = false;
    running_.store(false);
    kept_off_ = -1;
}

bool Warmer::elsewhere() {
    // Without this, the scheduler often woke the thread on the caller's CPU (35 of 60 times on a 2-vCPU VM), where
    // it waited for the caller's work or took its place, and the job ran late or slowed the call down.
    const int here = sched_getcpu();
    if (here < 0) return true;  // unknown: leave it to the scheduler
    if (here == kept_off_) return true;
    cpu_set_t cpus;
    if (pthread_getaffinity_np(pthread_self(), sizeof cpus, &cpus) != 0) return true;
    CPU_CLR(here, &cpus);
    if (CPU_COUNT(&cpus) == 0) return false;
    if (pthread_setaffinity_np(thread_->native_handle(), sizeof cpus, &cpus) != 0) return true;
    kept_off_ = here;
    return true;
}

void Warmer::main() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
        cv_.wait(lock, [this] { return wanted_ || quit_; });
        if (quit_) return;
        wanted_ = false;
        started_.fetch_add(1, std::memory_order_relaxed);
        lock.unlock();
        job_(stop_);
        if (stop_.load(std::memory_order_relaxed)) stopped_.fetch_add(1, std::memory_order_relaxed);
        lock.lock();
        running_.store(false, std::memory_order_release);
    }
}

}  // namespace bortengine
